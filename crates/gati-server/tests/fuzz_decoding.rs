//! Property-based fuzzing of everything a server decodes from a peer: Thrift frames (random and
//! mutated valid ones) through the bounded reader into every request type, wire tensors, and
//! images. The property: an error or a well-formed value, never a panic, never an allocation
//! beyond the frame. CI runs the default case count; `PROPTEST_CASES=200000` is the long run
//! recorded in docs/results.md.

use gati_core::ModelSpec;
use gati_rpc::convert::{input_to_tensor, tensor_from_wire, tensor_to_wire};
use gati_rpc::*;
use gati_server::wire::BoundedBinaryInput;
use proptest::prelude::*;
use thrift::protocol::{
    TBinaryOutputProtocol, TInputProtocol, TMessageIdentifier, TMessageType, TOutputProtocol, TSerializable,
};
use thrift::transport::TBufferChannel;

const MAX_FRAME: usize = 1 << 16;

fn spec() -> &'static ModelSpec {
    static SPEC: std::sync::OnceLock<ModelSpec> = std::sync::OnceLock::new();
    SPEC.get_or_init(|| {
        gati_core::BaseModel::new("resnet20", tch::Device::Cpu)
            .unwrap()
            .spec()
            .clone()
    })
}

/// A valid framed `infer` call carrying a small tensor.
fn valid_infer() -> Vec<u8> {
    let x = tch::Tensor::zeros([1, 3, 4, 4], (tch::Kind::Float, tch::Device::Cpu));
    let req = InferRequest {
        model: "resnet20".into(),
        input: Input::Tensor(tensor_to_wire(&x)),
        request_id: Some("r1".into()),
        deadline_ms: Some(100),
        top_k: Some(3),
    };
    let mut ch = TBufferChannel::with_capacity(0, 1 << 16);
    {
        let mut o = TBinaryOutputProtocol::new(&mut ch, true);
        o.write_message_begin(&TMessageIdentifier::new("infer", TMessageType::Call, 1))
            .unwrap();
        req.write_to_out_protocol(&mut o).unwrap();
        o.flush().unwrap();
    }
    let body = ch.write_bytes();
    let mut v = (body.len() as i32).to_be_bytes().to_vec();
    v.extend_from_slice(&body);
    v
}

/// Decodes `bytes` as one message of each request type a server reads.
fn decode_all(bytes: &[u8]) {
    macro_rules! each {
        ($($t:ty),*) => {$(
            let mut p = BoundedBinaryInput::new(bytes, MAX_FRAME);
            if p.read_message_begin().is_ok() {
                let _ = <$t>::read_from_in_protocol(&mut p);
            }
        )*};
    }
    each!(InferRequest, BaseRequest, Activation, CacheResult, TensorData);
}

fn mutate(mut v: Vec<u8>, edits: &[(usize, u8, u8)]) -> Vec<u8> {
    for &(pos, byte, op) in edits {
        if v.is_empty() {
            break;
        }
        let i = pos % v.len();
        match op % 3 {
            0 => v[i] = byte,
            1 => v.insert(i, byte),
            _ => {
                v.remove(i);
            }
        }
    }
    v
}

proptest! {
    #[test]
    fn random_frames_never_panic(body in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut v = (body.len() as i32).to_be_bytes().to_vec();
        v.extend_from_slice(&body);
        decode_all(&v);
        decode_all(&body);
    }

    #[test]
    fn mutated_valid_requests_never_panic(edits in proptest::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 1..8)) {
        decode_all(&mutate(valid_infer(), &edits));
    }

    #[test]
    fn wire_tensors_decode_to_their_shape_or_fail(
        dtype in prop_oneof![Just("float32".to_string()), Just("float16".to_string()), Just("uint8".to_string()), ".{0,12}"],
        shape in proptest::collection::vec(prop_oneof![-3i64..70, Just(i64::MAX), Just(i64::MIN), Just(1i64 << 40)], 0..6),
        data in proptest::collection::vec(any::<u8>(), 0..4096),
    ) {
        let t = TensorData { dtype: Some(dtype), shape: shape.clone(), data };
        if let Ok(x) = tensor_from_wire(&t) {
            prop_assert_eq!(x.size(), shape);
        }
        let _ = input_to_tensor(&Input::Tensor(t), spec());
    }

    #[test]
    fn mutated_images_never_panic(edits in proptest::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 1..16), png in any::<bool>()) {
        let img = image::RgbImage::from_fn(32, 32, |x, y| image::Rgb([x as u8 * 8, y as u8 * 8, 7]));
        let mut out = std::io::Cursor::new(Vec::new());
        let fmt = if png { image::ImageFormat::Png } else { image::ImageFormat::Jpeg };
        img.write_to(&mut out, fmt).unwrap();
        let bytes = mutate(out.into_inner(), &edits);
        if let Ok(x) = input_to_tensor(&Input::Image(bytes), spec()) {
            prop_assert_eq!(x.size(), vec![1, 3, 32, 32]);
        }
    }
}
