//! Wire values to tensors and back, with every check a hostile or buggy client needs.

use crate::generated::gati::{Input, InvalidInput, TensorData};
use gati_core::ModelSpec;
use tch::{Kind, Tensor};

/// Largest tensor accepted on the wire (elements), whatever its shape claims.
pub const MAX_ELEMENTS: i64 = 64 << 20;

fn invalid(message: impl Into<String>) -> InvalidInput {
    InvalidInput {
        message: message.into(),
    }
}

/// A checked float32 tensor from the wire: positive dimensions, byte length matching the shape,
/// finite values.
pub fn tensor_from_wire(t: &TensorData) -> Result<Tensor, InvalidInput> {
    let dtype = t.dtype.as_deref().unwrap_or("float32");
    if dtype != "float32" {
        return Err(invalid(format!(
            "tensor dtype '{dtype}' is not supported (only float32)"
        )));
    }
    if t.shape.is_empty() || t.shape.len() > 8 {
        return Err(invalid(format!(
            "tensor shape {:?} must have 1 to 8 dimensions",
            t.shape
        )));
    }
    let mut numel: i64 = 1;
    for &d in &t.shape {
        if d <= 0 {
            return Err(invalid(format!(
                "tensor shape {:?} has a non-positive dimension",
                t.shape
            )));
        }
        numel = numel
            .checked_mul(d)
            .filter(|&n| n <= MAX_ELEMENTS)
            .ok_or_else(|| invalid(format!("tensor shape {:?} exceeds {MAX_ELEMENTS} elements", t.shape)))?;
    }
    if t.data.len() as i64 != 4 * numel {
        return Err(invalid(format!(
            "tensor data is {} bytes, shape {:?} needs {} (float32)",
            t.data.len(),
            t.shape,
            4 * numel
        )));
    }
    let values: Vec<f32> = t
        .data
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(invalid(format!(
            "tensor value {} at index {i} is not finite",
            values[i]
        )));
    }
    Ok(Tensor::from_slice(&values).view(t.shape.as_slice()))
}

/// A float tensor as wire data (row-major, little-endian float32).
pub fn tensor_to_wire(t: &Tensor) -> TensorData {
    let t = t.to_kind(Kind::Float).contiguous();
    let values: Vec<f32> = Vec::try_from(t.flatten(0, -1)).expect("float tensor");
    let mut data = Vec::with_capacity(values.len() * 4);
    for v in values {
        data.extend_from_slice(&v.to_le_bytes());
    }
    TensorData {
        shape: t.size(),
        data,
        dtype: None,
    }
}

/// The normalised `[1, C, H, W]` input a request carries for a model with `spec`: an encoded image
/// (decoded, size-checked, normalised) or a raw tensor of shape `[C, H, W]` / `[1, C, H, W]`.
pub fn input_to_tensor(input: &Input, spec: &ModelSpec) -> Result<Tensor, InvalidInput> {
    let [c, h, w] = spec.input_shape;
    match input {
        Input::Image(bytes) => {
            let chw = gati_core::data::decode_image(bytes, h, w).map_err(|e| invalid(format!("image: {e:#}")))?;
            Ok(spec.normalize(&Tensor::from_slice(&chw).view([1, c, h, w]), tch::Device::Cpu))
        }
        Input::Tensor(t) => {
            let x = tensor_from_wire(t)?;
            let shape = x.size();
            if shape != [c, h, w] && shape != [1, c, h, w] {
                return Err(invalid(format!(
                    "tensor shape {shape:?} does not match model {} input [1, {c}, {h}, {w}]",
                    spec.name
                )));
            }
            Ok(x.view([1, c, h, w]))
        }
    }
}
