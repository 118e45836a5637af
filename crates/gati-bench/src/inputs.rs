//! A stream's requests made concrete: what goes on the wire (the encoded image file a client would
//! send, or a lossless PNG of the noisy frame) and the same pixels for in-process runs.

use anyhow::{Context, Result};
use gati_core::data::Dataset;
use gati_core::workload::{request_pixels, Request};
use gati_rpc::Input;
use std::collections::HashMap;
use std::sync::Arc;
use tch::{Kind, Tensor};

pub struct Prepared {
    pub requests: Vec<Request>,
    /// Ground-truth label of each request.
    pub labels: Vec<i64>,
    pub wire: Arc<Vec<Input>>,
    /// `u8 [1, 3, H, W]` per request: exactly what the server decodes from `wire`.
    pub pixels: Vec<Tensor>,
}

pub fn prepare(ds: &Dataset, requests: Vec<Request>) -> Result<Prepared> {
    let mut files: HashMap<usize, Option<Vec<u8>>> = HashMap::new();
    let mut wire = Vec::with_capacity(requests.len());
    let mut pixels = Vec::with_capacity(requests.len());
    for r in &requests {
        let px = request_pixels(&ds.images, r);
        let src = std::path::Path::new(&ds.sources[r.index]);
        // The original file when the server decodes it to exactly these pixels (CIFAR's JPEGs);
        // a lossless PNG of the pixels otherwise (perturbed frames, LFW's 250x250 originals).
        let original = match files.get(&r.index) {
            Some(b) => b.clone(),
            None => {
                let [_, _, h, w] = px.size()[..] else {
                    unreachable!("[1, 3, H, W]")
                };
                let b = std::fs::read(src)
                    .ok()
                    .filter(|b| gati_core::data::decode_image(b, h, w).is_ok());
                files.insert(r.index, b.clone());
                b
            }
        };
        let bytes = match original {
            Some(b) if *r == Request::plain(r.index) => b,
            _ => encode_png(&px)?,
        };
        wire.push(Input::Image(bytes));
        pixels.push(px);
    }
    Ok(Prepared {
        labels: requests.iter().map(|r| ds.labels[r.index]).collect(),
        requests,
        wire: Arc::new(wire),
        pixels,
    })
}

/// `u8 [1, 3, H, W]` → PNG bytes.
pub fn encode_png(px: &Tensor) -> Result<Vec<u8>> {
    let (h, w) = (px.size()[2] as u32, px.size()[3] as u32);
    let hwc = px.squeeze_dim(0).permute([1, 2, 0]).contiguous().to_kind(Kind::Uint8);
    let data = Vec::<u8>::try_from(hwc.view(-1))?;
    let img = image::RgbImage::from_raw(w, h, data).context("internal: pixel buffer size")?;
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png)?;
    Ok(out.into_inner())
}
