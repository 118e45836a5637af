//! Wire conversions refuse malformed tensors and images with a message naming the problem, and the
//! generated structs round-trip through the binary protocol.

use gati_core::BaseModel;
use gati_rpc::convert::{input_to_tensor, tensor_from_wire, tensor_to_wire};
use gati_rpc::{InferRequest, Input, TensorData};
use thrift::protocol::{TBinaryInputProtocol, TBinaryOutputProtocol, TSerializable};

fn bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn err(t: TensorData) -> String {
    tensor_from_wire(&t).unwrap_err().message
}

#[test]
fn malformed_tensors_are_refused_by_name() {
    let td = |shape: Vec<i64>, data: Vec<u8>, dtype: Option<&str>| TensorData {
        shape,
        data,
        dtype: dtype.map(String::from),
    };
    assert!(err(td(vec![2], bytes(&[1.0, 2.0]), Some("float16"))).contains("dtype 'float16'"));
    assert!(err(td(vec![], vec![], None)).contains("1 to 8 dimensions"));
    assert!(err(td(vec![2, -3], vec![], None)).contains("non-positive"));
    assert!(err(td(vec![1 << 40, 1 << 40], vec![], None)).contains("exceeds"));
    let e = err(td(vec![3, 2], bytes(&[1.0; 5]), None));
    assert!(e.contains("20 bytes, shape [3, 2] needs 24"), "{e}");
    assert!(err(td(vec![2], bytes(&[1.0, f32::NAN]), None)).contains("not finite"));
    let ok = tensor_from_wire(&td(vec![2, 1], bytes(&[1.5, -2.0]), None)).unwrap();
    assert_eq!(ok.size(), vec![2, 1]);
    assert_eq!(ok.double_value(&[1, 0]), -2.0);
}

#[test]
fn tensors_round_trip_through_the_wire_format() {
    let t = tch::Tensor::randn([1, 3, 4, 5], (tch::Kind::Float, tch::Device::Cpu));
    let back = tensor_from_wire(&tensor_to_wire(&t)).unwrap();
    assert!(back.equal(&t));
}

#[test]
fn inputs_must_fit_the_model() {
    let model = BaseModel::new("resnet20", tch::Device::Cpu).unwrap();
    let spec = model.spec();
    let wrong = Input::Tensor(TensorData {
        shape: vec![3, 16, 16],
        data: bytes(&vec![0.0; 768]),
        dtype: None,
    });
    let e = input_to_tensor(&wrong, spec).unwrap_err().message;
    assert!(
        e.contains("[3, 16, 16] does not match model resnet20 input [1, 3, 32, 32]"),
        "{e}"
    );
    let e = input_to_tensor(&Input::Image(b"GIF89a garbage".to_vec()), spec)
        .unwrap_err()
        .message;
    assert!(e.starts_with("image:"), "{e}");
    let e = input_to_tensor(&Input::Image(vec![0x89, b'P', b'N', b'G', 0, 0]), spec)
        .unwrap_err()
        .message;
    assert!(e.starts_with("image:"), "{e}");

    // A real test image decodes to exactly what the offline pipeline feeds the model.
    let file = gati_core::paths::cifar10_dir().unwrap().join("test/cat/0000.jpg");
    let jpeg = std::fs::read(&file).unwrap();
    let x = input_to_tensor(&Input::Image(jpeg.clone()), spec).unwrap();
    let px = gati_core::data::decode_image(&jpeg, 32, 32).unwrap();
    let expected = model.preprocess(&tch::Tensor::from_slice(&px).view([1, 3, 32, 32]));
    assert!(x.allclose(&expected, 1e-6, 1e-6, false));
}

#[test]
fn requests_round_trip_through_the_binary_protocol() {
    let req = InferRequest {
        model: "resnet56".into(),
        input: Input::Tensor(TensorData {
            shape: vec![1, 2],
            data: bytes(&[0.5, 1.0]),
            dtype: None,
        }),
        request_id: Some("r-1".into()),
        deadline_ms: Some(250),
        top_k: Some(3),
    };
    let mut buf = Vec::new();
    req.write_to_out_protocol(&mut TBinaryOutputProtocol::new(&mut buf, true))
        .unwrap();
    let back = InferRequest::read_from_in_protocol(&mut TBinaryInputProtocol::new(&buf[..], true)).unwrap();
    assert_eq!(back, req);
    // A truncated message is a protocol error, not a panic.
    let cut = &buf[..buf.len() / 2];
    assert!(InferRequest::read_from_in_protocol(&mut TBinaryInputProtocol::new(cut, true)).is_err());
}
