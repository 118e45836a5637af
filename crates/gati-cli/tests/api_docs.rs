//! The public API as a user meets it: every Python example in docs/api.md runs against live
//! clusters in inline and distributed mode (the packaged client in clients/python and raw Thrift),
//! and a message that does not decode gets a readable TApplicationException on a connection that
//! stays usable.

mod common;

use common::{test_images, Cluster};
use gati_rpc::{GatiSyncClient, TGatiSyncClient};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;
use thrift::protocol::{
    TBinaryInputProtocol, TBinaryOutputProtocol, TFieldIdentifier, TInputProtocol, TMessageIdentifier, TMessageType,
    TOutputProtocol, TStructIdentifier, TType,
};
use thrift::transport::{TBufferChannel, TFramedReadTransport, TFramedWriteTransport};

fn python_blocks() -> Vec<String> {
    let doc = std::fs::read_to_string(gati_core::paths::project_root().join("docs/api.md")).unwrap();
    let mut blocks = Vec::new();
    let mut rest = doc.as_str();
    while let Some(start) = rest.find("```python\n") {
        let body = &rest[start + 10..];
        let end = body.find("```").expect("closed code block");
        blocks.push(body[..end].to_string());
        rest = &body[end + 3..];
    }
    blocks
}

#[test]
fn every_python_example_in_the_api_docs_runs_in_both_modes() {
    let blocks = python_blocks();
    assert!(blocks.len() >= 3, "docs/api.md lost its examples");
    let image = test_images(1).remove(0);
    // The same image's raw RGB bytes (HWC), for the numpy example.
    let chw = gati_core::data::decode_image(&std::fs::read(&image).unwrap(), 32, 32).unwrap();
    let hwc: Vec<u8> = (0..32 * 32)
        .flat_map(|i| (0..3).map(move |c| (c, i)))
        .map(|(c, i)| chw[c * 1024 + i])
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let pixels = dir.path().join("pixels.rgb");
    std::fs::write(&pixels, hwc).unwrap();
    let package: PathBuf = gati_core::paths::project_root().join("clients/python");
    for mode in ["inline", "distributed"] {
        let c = Cluster::up(mode);
        for (i, code) in blocks.iter().enumerate() {
            let out = Command::new(gati_core::weights::python())
                .arg("-c")
                .arg(code)
                .env("PYTHONPATH", &package)
                .env("GATI_ENDPOINT", c.endpoint())
                .env("GATI_IMAGE", &image)
                .env("GATI_PIXELS", &pixels)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{mode}: example {i} of docs/api.md failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// `infer` whose InferRequest lacks its required `model`.
fn infer_without_model() -> Vec<u8> {
    let mut ch = TBufferChannel::with_capacity(0, 1 << 16);
    {
        let mut o = TBinaryOutputProtocol::new(&mut ch, true);
        o.write_message_begin(&TMessageIdentifier::new("infer", TMessageType::Call, 7))
            .unwrap();
        o.write_struct_begin(&TStructIdentifier::new("args")).unwrap();
        o.write_field_begin(&TFieldIdentifier::new("request", TType::Struct, 1))
            .unwrap();
        o.write_struct_begin(&TStructIdentifier::new("InferRequest")).unwrap();
        o.write_field_begin(&TFieldIdentifier::new("input", TType::Struct, 2))
            .unwrap();
        o.write_struct_begin(&TStructIdentifier::new("Input")).unwrap();
        o.write_field_begin(&TFieldIdentifier::new("image", TType::String, 1))
            .unwrap();
        o.write_bytes(b"not even an image").unwrap();
        o.write_field_end().unwrap();
        o.write_field_stop().unwrap();
        o.write_struct_end().unwrap();
        o.write_field_end().unwrap();
        o.write_field_stop().unwrap();
        o.write_struct_end().unwrap();
        o.write_field_end().unwrap();
        o.write_field_stop().unwrap();
        o.write_struct_end().unwrap();
        o.write_message_end().unwrap();
        o.flush().unwrap();
    }
    let body = ch.write_bytes();
    let mut frame = (body.len() as i32).to_be_bytes().to_vec();
    frame.extend_from_slice(&body);
    frame
}

#[test]
fn a_message_that_does_not_decode_gets_a_readable_protocol_error_and_the_connection_goes_on() {
    let c = Cluster::up("inline");
    let mut s = TcpStream::connect(c.endpoint()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&infer_without_model()).unwrap();
    let mut len = [0u8; 4];
    s.read_exact(&mut len).unwrap();
    let mut body = vec![0u8; i32::from_be_bytes(len) as usize];
    s.read_exact(&mut body).unwrap();
    let mut i = TBinaryInputProtocol::new(std::io::Cursor::new(body), true);
    let ident = i.read_message_begin().unwrap();
    assert_eq!(
        (ident.name.as_str(), ident.message_type, ident.sequence_number),
        ("infer", TMessageType::Exception, 7)
    );
    let e = thrift::Error::read_application_error_from_in_protocol(&mut i).unwrap();
    assert_eq!(e.kind, thrift::ApplicationErrorKind::ProtocolError);
    assert_eq!(e.message, "infer: missing required field InferRequest.model");
    // The same connection serves the next message.
    let mut client = GatiSyncClient::new(
        TBinaryInputProtocol::new(TFramedReadTransport::new(s.try_clone().unwrap()), true),
        TBinaryOutputProtocol::new(TFramedWriteTransport::new(s), true),
    );
    assert!(client.health().unwrap().ok);
    assert_eq!(client.models().unwrap()[0].name, "resnet20");
}
