//! Request streams over a labelled dataset, seeded and reproducible: the order in which a load
//! generator, the benchmark and the online-learning tests send images.
//!
//! - `iid`: uniform over the images, with replacement;
//! - `zipf[:s]`: class popularity Zipf with exponent `s` (ranks from a seeded permutation), an
//!   image uniform within the class;
//! - `working-set[:k[:every]]`: `k` classes active at a time, redrawn every `every` requests;
//! - `bursty-repeat[:r[:window]]`: each image recurs `r` times, interleaved with the other
//!   images among `window` open bursts, every recurrence with small pixel noise (video frames).
//! - `door-camera[:people[:burst]]`: a camera at a door: `people` identities (classes) are around
//!   at a time; one at a time walks past and is seen as `burst` frames of one of their images, each
//!   frame shifted by up to `CAMERA_SHIFT` pixels, with its own brightness, contrast and noise;
//!   after each burst, one person leaves and another arrives with probability `CAMERA_TURNOVER`.
//! - `frames[:burst[:window]]`: video of objects passing by: each image is seen as `burst`
//!   consecutive frames, interleaved with the other images among `window` in view. A burst's first
//!   frame has door-camera's perturbations; each next one moves by at most a pixel per axis from the
//!   last (within `CAMERA_SHIFT`), with brightness and contrast drifting, fresh noise, and every
//!   frame JPEG-encoded at a quality drawn from `FRAME_JPEG_QUALITY` (`Frame`).

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
    DoorCamera { people: usize, burst: usize },
    Frames { burst: usize, window: usize },
}

/// One request of a stream: which image, and (for recurrences) the seed of its pixel noise or
/// (for camera frames) of its whole perturbation.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub index: usize,
    pub noise: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub camera: Option<u64>,
    /// A video frame with these camera settings (`frames` streams).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frame: Option<Frame>,
}

/// What the camera did to one video frame of an image: shifted by (`dx`, `dy`) pixels (edges
/// repeated), contrast scaled about the mean by `contrast`, brightness moved by `brightness`,
/// pixel noise drawn from `noise_seed`, then JPEG at `quality`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Frame {
    pub dx: i64,
    pub dy: i64,
    pub contrast: f64,
    pub brightness: f64,
    pub noise_seed: u64,
    pub quality: u8,
}

impl Frame {
    /// A burst's first frame: settings drawn uniformly, as a door-camera frame's.
    fn first(rng: &mut StdRng) -> Self {
        Self {
            dx: rng.gen_range(-CAMERA_SHIFT..=CAMERA_SHIFT),
            dy: rng.gen_range(-CAMERA_SHIFT..=CAMERA_SHIFT),
            contrast: 1.0 + rng.gen_range(-CAMERA_CONTRAST..=CAMERA_CONTRAST),
            brightness: rng.gen_range(-CAMERA_BRIGHTNESS..=CAMERA_BRIGHTNESS),
            noise_seed: rng.gen(),
            quality: rng.gen_range(FRAME_JPEG_QUALITY.0..=FRAME_JPEG_QUALITY.1),
        }
    }

    /// The next frame of the same scene: the object moves by at most a pixel per axis, light
    /// drifts a little, fresh sensor noise, and the encoder picks a new quality.
    fn next(&self, rng: &mut StdRng) -> Self {
        let step = |v: i64, rng: &mut StdRng| (v + rng.gen_range(-1..=1)).clamp(-CAMERA_SHIFT, CAMERA_SHIFT);
        Self {
            dx: step(self.dx, rng),
            dy: step(self.dy, rng),
            contrast: (self.contrast + rng.gen_range(-0.02..=0.02)).clamp(1.0 - CAMERA_CONTRAST, 1.0 + CAMERA_CONTRAST),
            brightness: (self.brightness + rng.gen_range(-3.0..=3.0)).clamp(-CAMERA_BRIGHTNESS, CAMERA_BRIGHTNESS),
            noise_seed: rng.gen(),
            quality: rng.gen_range(FRAME_JPEG_QUALITY.0..=FRAME_JPEG_QUALITY.1),
        }
    }
}

impl Request {
    /// The image as it is.
    pub fn plain(index: usize) -> Self {
        Self {
            index,
            noise: None,
            camera: None,
            frame: None,
        }
    }
}

/// Largest per-pixel change (in 0..255 units) a recurrence gets.
pub const NOISE_AMPLITUDE: i64 = 3;
/// Largest shift (pixels, each axis) of a camera frame.
pub const CAMERA_SHIFT: i64 = 3;
/// Brightness offset (0..255 units) and contrast factor ranges of a camera frame.
pub const CAMERA_BRIGHTNESS: f64 = 12.0;
pub const CAMERA_CONTRAST: f64 = 0.1;
/// Chance that, after a burst, one person at the door is replaced by another.
pub const CAMERA_TURNOVER: f64 = 0.25;
/// JPEG quality range of a `frames` frame.
pub const FRAME_JPEG_QUALITY: (u8, u8) = (60, 95);

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
            "door-camera" | "frames" => 2,
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
            "door-camera" => Stream::DoorCamera {
                people: num(0, 3.0)? as usize,
                burst: num(1, 8.0)? as usize,
            },
            "frames" => Stream::Frames {
                burst: num(0, 8.0)? as usize,
                window: num(1, 4.0)? as usize,
            },
            other => {
                bail!(
                    "unknown stream '{other}' (iid, zipf[:s], working-set[:k[:every]], bursty-repeat[:r[:window]], \
                     door-camera[:people[:burst]], frames[:burst[:window]])"
                )
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
            Stream::DoorCamera { people, burst } => format!("door-camera-{people}-{burst}"),
            Stream::Frames { burst, window } => format!("frames-{burst}-{window}"),
        }
    }

    /// The first `n` requests of this stream over images labelled `labels`.
    pub fn generate(&self, labels: &[i64], n: usize, seed: u64) -> Vec<Request> {
        if labels.is_empty() {
            return Vec::new();
        }
        let mut rng = StdRng::seed_from_u64(seed);
        let by_class = by_class(labels);
        let plain = Request::plain;
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
            Stream::BurstyRepeat { r, window } | Stream::Frames { burst: r, window } => {
                let video = matches!(self, Stream::Frames { .. });
                // Open bursts: (image, recurrences left, its last video frame). Every emission is
                // noisy but the first; in video, every frame follows the burst's last one.
                let mut open: Vec<(usize, usize, Option<Frame>)> = Vec::new();
                let mut out = Vec::with_capacity(n);
                while out.len() < n {
                    while open.len() < window.max(1) {
                        open.push((rng.gen_range(0..labels.len()), r.max(1), None));
                    }
                    let b = rng.gen_range(0..open.len());
                    let (index, left, last) = open[b];
                    let first = left == r.max(1);
                    if video {
                        let f = match last {
                            None => Frame::first(&mut rng),
                            Some(l) => l.next(&mut rng),
                        };
                        open[b].2 = Some(f);
                        out.push(Request {
                            frame: Some(f),
                            ..Request::plain(index)
                        });
                    } else {
                        out.push(Request {
                            noise: (!first).then(|| rng.gen()),
                            ..Request::plain(index)
                        });
                    }
                    if left == 1 {
                        let _ = open.swap_remove(b);
                    } else {
                        open[b].1 = left - 1;
                    }
                }
                out
            }
            Stream::DoorCamera { people, burst } => {
                let people = people.clamp(1, by_class.len());
                let mut classes: Vec<usize> = (0..by_class.len()).collect();
                classes.shuffle(&mut rng);
                // At the door: classes[..people]; the rest wait their turn.
                let mut out = Vec::with_capacity(n);
                while out.len() < n {
                    let members = &by_class[classes[rng.gen_range(0..people)]];
                    let index = members[rng.gen_range(0..members.len())];
                    for _ in 0..burst.max(1).min(n - out.len()) {
                        out.push(Request {
                            camera: Some(rng.gen()),
                            ..Request::plain(index)
                        });
                    }
                    if people < classes.len() && rng.gen_bool(CAMERA_TURNOVER) {
                        let leaving = rng.gen_range(0..people);
                        let arriving = rng.gen_range(people..classes.len());
                        classes.swap(leaving, arriving);
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

/// The pixels a request carries, `u8 [1, 3, H, W]`: the image itself, with uniform noise in
/// `[-NOISE_AMPLITUDE, NOISE_AMPLITUDE]` (saturating), or as a camera frame (`camera_frame`).
pub fn request_pixels(images: &Tensor, req: &Request) -> Tensor {
    let x = images.narrow(0, req.index as i64, 1);
    if let Some(f) = &req.frame {
        return video_frame(&x, f);
    }
    match (req.noise, req.camera) {
        (_, Some(seed)) => camera_frame(&x, seed),
        (Some(seed), None) => add_noise(&x, &mut StdRng::seed_from_u64(seed)),
        (None, None) => x.shallow_clone(),
    }
}

fn add_noise(x: &Tensor, rng: &mut StdRng) -> Tensor {
    let noise: Vec<i16> = (0..x.numel())
        .map(|_| rng.gen_range(-NOISE_AMPLITUDE..=NOISE_AMPLITUDE) as i16)
        .collect();
    (x.to_kind(Kind::Int16) + Tensor::from_slice(&noise).view(x.size().as_slice()))
        .clamp(0, 255)
        .to_kind(Kind::Uint8)
}

/// The dataset with every image replaced by one camera frame of it (seeded by `seed` and the
/// sample's position), labels and sources kept.
pub fn camera_frames(ds: &crate::data::Dataset, seed: u64) -> crate::data::Dataset {
    map_images(ds, seed, camera_frame)
}

/// The dataset with every image replaced by one video frame of it, drawn as a `frames` burst's
/// first frame is (seeded by `seed` and the sample's position); labels and sources kept. Training
/// data for a base model fit to camera traffic (`gati export-data --video-frames`).
pub fn video_frames(ds: &crate::data::Dataset, seed: u64) -> crate::data::Dataset {
    map_images(ds, seed, |x, s| {
        video_frame(x, &Frame::first(&mut StdRng::seed_from_u64(s)))
    })
}

/// `ds` with image i replaced by `f(image i, a seed drawn from seed and i)`.
fn map_images(ds: &crate::data::Dataset, seed: u64, f: impl Fn(&Tensor, u64) -> Tensor) -> crate::data::Dataset {
    let images: Vec<Tensor> = (0..ds.len())
        .map(|i| {
            f(
                &ds.images.narrow(0, i as i64, 1),
                seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
            )
        })
        .collect();
    crate::data::Dataset {
        images: Tensor::cat(&images, 0),
        labels: ds.labels.clone(),
        classes: ds.classes.clone(),
        sources: ds.sources.clone(),
    }
}

/// One camera frame of `x` (`u8 [1, 3, H, W]`): shifted by up to `CAMERA_SHIFT` pixels per axis
/// (edges repeated), contrast scaled about the mean by `1 ± CAMERA_CONTRAST`, brightness moved by
/// up to `CAMERA_BRIGHTNESS`, then pixel noise; all drawn from `seed`.
pub fn camera_frame(x: &Tensor, seed: u64) -> Tensor {
    let mut rng = StdRng::seed_from_u64(seed);
    let (dx, dy) = (
        rng.gen_range(-CAMERA_SHIFT..=CAMERA_SHIFT),
        rng.gen_range(-CAMERA_SHIFT..=CAMERA_SHIFT),
    );
    let contrast = 1.0 + rng.gen_range(-CAMERA_CONTRAST..=CAMERA_CONTRAST);
    let brightness = rng.gen_range(-CAMERA_BRIGHTNESS..=CAMERA_BRIGHTNESS);
    let f = shift_and_light(x, dx, dy, contrast, brightness);
    add_noise(&f, &mut rng)
}

/// One video frame of `x` with the camera settings `f`.
pub fn video_frame(x: &Tensor, f: &Frame) -> Tensor {
    let lit = shift_and_light(x, f.dx, f.dy, f.contrast, f.brightness);
    let noisy = add_noise(&lit, &mut StdRng::seed_from_u64(f.noise_seed));
    jpeg_reencode(&noisy, f.quality)
}

/// `x` shifted by (`dx`, `dy`) pixels (edges repeated), contrast scaled about its mean, brightness
/// moved; rounded back to `u8`.
fn shift_and_light(x: &Tensor, dx: i64, dy: i64, contrast: f64, brightness: f64) -> Tensor {
    let [_, _, h, w] = x.size()[..] else {
        panic!("camera frames need [1, C, H, W]")
    };
    let s = CAMERA_SHIFT;
    let f = x
        .to_kind(Kind::Float)
        .pad([s, s, s, s], "replicate", None)
        .narrow(2, s - dy, h)
        .narrow(3, s - dx, w);
    let mean = f.mean(Kind::Float);
    ((f - &mean) * contrast + mean + brightness)
        .round()
        .clamp(0.0, 255.0)
        .to_kind(Kind::Uint8)
}

/// `x` (`u8 [1, 3, H, W]`) encoded as JPEG at `quality`, and decoded again.
pub fn jpeg_reencode(x: &Tensor, quality: u8) -> Tensor {
    let [_, c, h, w] = x.size()[..] else {
        panic!("jpeg_reencode needs [1, C, H, W]")
    };
    assert_eq!(c, 3, "jpeg_reencode needs RGB");
    let hwc = Vec::<u8>::try_from(x.get(0).permute([1, 2, 0]).contiguous().flatten(0, -1)).expect("u8 pixels");
    let mut bytes = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, quality)
        .encode(&hwc, w as u32, h as u32, image::ExtendedColorType::Rgb8)
        .expect("JPEG encoding of an in-memory RGB image");
    let img = image::load_from_memory_with_format(&bytes, image::ImageFormat::Jpeg)
        .expect("decoding the JPEG just encoded")
        .to_rgb8();
    Tensor::from_slice(img.as_raw())
        .view([h, w, 3])
        .permute([2, 0, 1])
        .unsqueeze(0)
        .contiguous()
}

/// The requests `reqs` over `ds` made concrete, in order: each request's pixels as one sample,
/// labelled as its source image (`source#position`).
pub fn stream_dataset(ds: &crate::data::Dataset, reqs: &[Request]) -> crate::data::Dataset {
    let frames: Vec<Tensor> = reqs.iter().map(|r| request_pixels(&ds.images, r)).collect();
    crate::data::Dataset {
        images: if frames.is_empty() {
            ds.images.narrow(0, 0, 0)
        } else {
            Tensor::cat(&frames, 0)
        },
        labels: reqs.iter().map(|r| ds.labels[r.index]).collect(),
        classes: ds.classes.clone(),
        sources: reqs
            .iter()
            .enumerate()
            .map(|(i, r)| format!("{}#{i}", ds.sources[r.index]))
            .collect(),
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
    fn door_camera_shows_few_people_in_bursts_of_perturbed_frames() {
        let l: Vec<i64> = (0..620).map(|i| i % 62).collect();
        let reqs = Stream::parse("door-camera:3:6").unwrap().generate(&l, 1200, 9);
        assert!(reqs.iter().all(|r| r.camera.is_some()));
        // Bursts: the same image 6 times in a row.
        for b in reqs.chunks(6) {
            assert!(b.iter().all(|r| r.index == b[0].index));
        }
        // Few people at a time, but people change over time.
        let mut seen_overall = std::collections::HashSet::new();
        let mut per_window = Vec::new();
        for w in reqs.chunks(60) {
            let people: std::collections::HashSet<i64> = w.iter().map(|r| l[r.index]).collect();
            per_window.push(people.len());
            seen_overall.extend(people);
        }
        // 3 at the door plus about 2.5 arrivals per 10 bursts.
        let mean = per_window.iter().sum::<usize>() as f64 / per_window.len() as f64;
        assert!(mean < 5.5, "{per_window:?}");
        assert!(seen_overall.len() > 10, "{}", seen_overall.len());
        // Frames differ from the image and from each other, but stay close to it.
        let mut img = Tensor::arange(3 * 32 * 32, (Kind::Int64, tch::Device::Cpu));
        img = (img.remainder(200) + 20).to_kind(Kind::Uint8).view([1, 3, 32, 32]);
        let a = camera_frame(&img, 1).to_kind(Kind::Float);
        let b = camera_frame(&img, 2).to_kind(Kind::Float);
        assert_eq!(a.size(), [1, 3, 32, 32]);
        let diff = (&a - &b).abs().mean(Kind::Float).double_value(&[]);
        assert!(diff > 1.0, "{diff}");
    }

    #[test]
    fn camera_and_video_frames_perturb_every_image_reproducibly_and_keep_labels() {
        // Smooth ramps (4 levels a pixel), so that a frame's few pixels of shift stay small.
        let opts = (Kind::Int64, tch::Device::Cpu);
        let images = (Tensor::arange(16, opts).view([1, 1, 16, 1]) * 4
            + Tensor::arange(16, opts).view([1, 1, 1, 16]) * 3
            + Tensor::arange(4, opts).view([4, 1, 1, 1]) * 10
            + Tensor::arange(3, opts).view([1, 3, 1, 1]) * 5
            + 40)
            .to_kind(Kind::Uint8);
        let ds = crate::data::Dataset {
            images,
            labels: vec![0, 1, 2, 3],
            classes: vec!["a".into(); 4],
            sources: (0..4).map(|i| format!("img{i}")).collect(),
        };
        type Frames = fn(&crate::data::Dataset, u64) -> crate::data::Dataset;
        let kinds: [(&str, Frames); 2] = [("camera", camera_frames), ("video", video_frames)];
        for (kind, frames) in kinds {
            let a = frames(&ds, 5);
            assert_eq!(
                (a.labels.clone(), a.sources.clone()),
                (ds.labels.clone(), ds.sources.clone()),
                "{kind}"
            );
            assert_eq!(a.images.size(), ds.images.size(), "{kind}");
            assert!(a.images.equal(&frames(&ds, 5).images), "{kind}");
            assert!(!a.images.equal(&frames(&ds, 6).images), "{kind}");
            for i in 0..4 {
                let (x, y) = (ds.images.get(i), a.images.get(i));
                assert!(!x.equal(&y), "{kind}: image {i} unchanged");
                // A frame stays near its image: shifted a few pixels, relit, re-encoded.
                let diff = (x.to_kind(Kind::Float) - y.to_kind(Kind::Float))
                    .abs()
                    .mean(Kind::Float);
                assert!(diff.double_value(&[]) < 25.0, "{kind}: image {i} moved by {diff}");
            }
        }
        assert!(!camera_frames(&ds, 5).images.equal(&video_frames(&ds, 5).images));
    }

    #[test]
    fn frames_are_bursts_of_video_frames_that_drift_a_little() {
        let reqs = Stream::parse("frames:5:3").unwrap().generate(&labels(), 300, 4);
        assert!(reqs.iter().all(|r| r.frame.is_some()));
        // 60 bursts over 200 images: about 52 distinct (some images recur in a later burst).
        let distinct: std::collections::HashSet<usize> = reqs.iter().map(|r| r.index).collect();
        assert!((45..=60).contains(&distinct.len()), "{}", distinct.len());
        // Within a burst, consecutive frames move by at most a pixel per axis.
        let mut last: std::collections::HashMap<usize, Frame> = std::collections::HashMap::new();
        let mut moved = 0;
        for r in &reqs {
            let f = r.frame.unwrap();
            assert!(f.dx.abs() <= CAMERA_SHIFT && f.dy.abs() <= CAMERA_SHIFT);
            if let Some(p) = last.insert(r.index, f) {
                if (f.dx - p.dx).abs() <= 1 && (f.dy - p.dy).abs() <= 1 {
                    moved += (f.dx != p.dx || f.dy != p.dy) as usize;
                }
            }
        }
        assert!(moved > 50, "{moved}");
        let mut img = Tensor::arange(3 * 32 * 32, (Kind::Int64, tch::Device::Cpu));
        img = (img.remainder(200) + 20).to_kind(Kind::Uint8).view([1, 3, 32, 32]);
        let images = img.repeat([200, 1, 1, 1]);
        let f = reqs[0].frame.unwrap();
        let a = request_pixels(&images, &reqs[0]).to_kind(Kind::Float);
        let plain = shift_and_light(&img, f.dx, f.dy, f.contrast, f.brightness).to_kind(Kind::Float);
        let diff = (&a - &plain).abs().mean(Kind::Float).double_value(&[]);
        // Noise and JPEG change the frame, a little.
        assert!(diff > 0.1 && diff < 20.0, "{diff}");
        assert_eq!(a.size(), [1, 3, 32, 32]);
    }

    #[test]
    fn bad_specs_are_named() {
        let e = Stream::parse("zipf:-1").unwrap_err().to_string();
        assert!(e.contains("-1"), "{e}");
        assert!(Stream::parse("poisson").unwrap_err().to_string().contains("poisson"));
    }
}
