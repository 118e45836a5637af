//! The servers' input side of Thrift's framed binary protocol, bounded: a whole frame (at most
//! `max` bytes) is read into memory first, and every length inside it (strings, binaries, list,
//! set and map sizes) is checked against the bytes left in the frame before anything is
//! allocated. The thrift crate's own reader trusts declared lengths: a 30-byte request declaring
//! a list of 2^31 elements makes the generated code reserve 16 GiB (the process aborts wherever
//! that allocation fails), and a negative binary length panics. Here both are a protocol error
//! and the connection closes.

use std::io::Read;
use thrift::protocol::{
    TFieldIdentifier, TInputProtocol, TListIdentifier, TMapIdentifier, TMessageIdentifier, TMessageType,
    TSetIdentifier, TStructIdentifier, TType,
};
use thrift::{ProtocolError, ProtocolErrorKind};

pub struct BoundedBinaryInput<R: Read> {
    inner: R,
    max: usize,
    frame: Vec<u8>,
    pos: usize,
}

fn invalid(kind: ProtocolErrorKind, message: String) -> thrift::Error {
    thrift::Error::Protocol(ProtocolError { kind, message })
}

impl<R: Read> BoundedBinaryInput<R> {
    pub fn new(inner: R, max_frame_bytes: usize) -> Self {
        Self {
            inner,
            max: max_frame_bytes,
            frame: Vec::new(),
            pos: 0,
        }
    }

    /// Reads the next frame into memory (each message is one frame).
    fn next_frame(&mut self) -> thrift::Result<()> {
        let mut len = [0u8; 4];
        self.inner.read_exact(&mut len)?;
        let n = i32::from_be_bytes(len);
        if n < 0 || n as usize > self.max {
            return Err(thrift::Error::Transport(thrift::TransportError::new(
                thrift::TransportErrorKind::SizeLimit,
                format!("frame of {n} bytes refused (limit {})", self.max),
            )));
        }
        self.frame.clear();
        self.frame.resize(n as usize, 0);
        self.inner.read_exact(&mut self.frame)?;
        self.pos = 0;
        Ok(())
    }

    fn left(&self) -> usize {
        self.frame.len() - self.pos
    }

    fn take(&mut self, n: usize) -> thrift::Result<&[u8]> {
        if n > self.left() {
            return Err(thrift::Error::Transport(thrift::TransportError::new(
                thrift::TransportErrorKind::EndOfFile,
                format!("message truncated: {n} bytes wanted, {} left in the frame", self.left()),
            )));
        }
        let s = &self.frame[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> thrift::Result<[u8; N]> {
        Ok(self.take(N)?.try_into().expect("took N bytes"))
    }

    /// A declared length, checked against what the frame can still hold (`unit` bytes per item
    /// at least).
    fn length(&mut self, what: &str, unit: usize) -> thrift::Result<usize> {
        let n = i32::from_be_bytes(self.array()?);
        if n < 0 || (n as usize).saturating_mul(unit) > self.left() {
            return Err(invalid(
                ProtocolErrorKind::SizeLimit,
                format!(
                    "{what} of declared size {n} does not fit the {} bytes left",
                    self.left()
                ),
            ));
        }
        Ok(n as usize)
    }

    fn ttype(&mut self) -> thrift::Result<TType> {
        Ok(match self.array::<1>()?[0] {
            0x00 => TType::Stop,
            0x01 => TType::Void,
            0x02 => TType::Bool,
            0x03 => TType::I08,
            0x04 => TType::Double,
            0x06 => TType::I16,
            0x08 => TType::I32,
            0x0A => TType::I64,
            0x0B => TType::String,
            0x0C => TType::Struct,
            0x0D => TType::Map,
            0x0E => TType::Set,
            0x0F => TType::List,
            0x10 => TType::Utf8,
            0x11 => TType::Utf16,
            b => {
                return Err(invalid(
                    ProtocolErrorKind::InvalidData,
                    format!("unknown type byte {b}"),
                ))
            }
        })
    }
}

impl<R: Read> TInputProtocol for BoundedBinaryInput<R> {
    fn read_message_begin(&mut self) -> thrift::Result<TMessageIdentifier> {
        self.next_frame()?;
        let head = self.array::<4>()?;
        if head[0..2] != [0x80, 0x01] {
            return Err(invalid(
                ProtocolErrorKind::BadVersion,
                format!("not a strict binary-protocol message (starts {:02x?})", &head[0..2]),
            ));
        }
        let kind = TMessageType::try_from(head[3])?;
        let name = self.read_string()?;
        let seq = self.read_i32()?;
        Ok(TMessageIdentifier::new(name, kind, seq))
    }

    fn read_message_end(&mut self) -> thrift::Result<()> {
        Ok(())
    }

    fn read_struct_begin(&mut self) -> thrift::Result<Option<TStructIdentifier>> {
        Ok(None)
    }

    fn read_struct_end(&mut self) -> thrift::Result<()> {
        Ok(())
    }

    fn read_field_begin(&mut self) -> thrift::Result<TFieldIdentifier> {
        let t = self.ttype()?;
        let id = if t == TType::Stop { 0 } else { self.read_i16()? };
        Ok(TFieldIdentifier::new::<Option<String>, String, i16>(None, t, id))
    }

    fn read_field_end(&mut self) -> thrift::Result<()> {
        Ok(())
    }

    fn read_bool(&mut self) -> thrift::Result<bool> {
        Ok(self.read_i8()? != 0)
    }

    fn read_bytes(&mut self) -> thrift::Result<Vec<u8>> {
        let n = self.length("binary", 1)?;
        Ok(self.take(n)?.to_vec())
    }

    fn read_i8(&mut self) -> thrift::Result<i8> {
        Ok(i8::from_be_bytes(self.array()?))
    }

    fn read_i16(&mut self) -> thrift::Result<i16> {
        Ok(i16::from_be_bytes(self.array()?))
    }

    fn read_i32(&mut self) -> thrift::Result<i32> {
        Ok(i32::from_be_bytes(self.array()?))
    }

    fn read_i64(&mut self) -> thrift::Result<i64> {
        Ok(i64::from_be_bytes(self.array()?))
    }

    fn read_double(&mut self) -> thrift::Result<f64> {
        Ok(f64::from_be_bytes(self.array()?))
    }

    fn read_string(&mut self) -> thrift::Result<String> {
        let bytes = self.read_bytes()?;
        String::from_utf8(bytes).map_err(|e| invalid(ProtocolErrorKind::InvalidData, format!("string: {e}")))
    }

    fn read_list_begin(&mut self) -> thrift::Result<TListIdentifier> {
        let t = self.ttype()?;
        let n = self.length("list", 1)?;
        Ok(TListIdentifier::new(t, n as i32))
    }

    fn read_list_end(&mut self) -> thrift::Result<()> {
        Ok(())
    }

    fn read_set_begin(&mut self) -> thrift::Result<TSetIdentifier> {
        let t = self.ttype()?;
        let n = self.length("set", 1)?;
        Ok(TSetIdentifier::new(t, n as i32))
    }

    fn read_set_end(&mut self) -> thrift::Result<()> {
        Ok(())
    }

    fn read_map_begin(&mut self) -> thrift::Result<TMapIdentifier> {
        let (k, v) = (self.ttype()?, self.ttype()?);
        let n = self.length("map", 2)?;
        Ok(TMapIdentifier::new(k, v, n as i32))
    }

    fn read_map_end(&mut self) -> thrift::Result<()> {
        Ok(())
    }

    fn read_byte(&mut self) -> thrift::Result<u8> {
        Ok(self.array::<1>()?[0])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use thrift::protocol::{TBinaryOutputProtocol, TOutputProtocol};
    use thrift::transport::TBufferChannel;

    fn framed(body: &[u8]) -> Vec<u8> {
        let mut v = (body.len() as i32).to_be_bytes().to_vec();
        v.extend_from_slice(body);
        v
    }

    fn message_with(extra: &[u8]) -> Vec<u8> {
        let mut body = vec![0x80, 0x01, 0x00, 0x01];
        body.extend_from_slice(&5i32.to_be_bytes());
        body.extend_from_slice(b"infer");
        body.extend_from_slice(&7i32.to_be_bytes());
        body.extend_from_slice(extra);
        framed(&body)
    }

    #[test]
    fn declared_sizes_beyond_the_frame_are_refused_before_allocation() {
        // A list of i64 declaring 2^31 - 1 elements, and a binary of negative length.
        for extra in [vec![0x0A, 0x7f, 0xff, 0xff, 0xff], vec![0xff, 0xff, 0xff, 0xfe]] {
            let bytes = message_with(&extra);
            let mut q = BoundedBinaryInput::new(&bytes[..], 1 << 20);
            q.read_message_begin().unwrap();
            let e = if extra.len() == 5 {
                q.read_list_begin().unwrap_err()
            } else {
                q.read_bytes().unwrap_err()
            };
            assert!(format!("{e:?}").contains("does not fit"), "{e:?}");
        }
    }

    #[test]
    fn oversized_and_truncated_frames_are_errors() {
        let big = framed(&[0u8; 100]);
        let mut p = BoundedBinaryInput::new(&big[..], 50);
        assert!(format!("{:?}", p.read_message_begin().unwrap_err()).contains("refused"));
        let mut short = message_with(&[]);
        short.truncate(short.len() - 3);
        let mut p = BoundedBinaryInput::new(&short[..], 1 << 20);
        assert!(p.read_message_begin().is_err());
    }

    #[test]
    fn reads_what_the_thrift_writer_wrote() {
        let mut ch = TBufferChannel::with_capacity(0, 4096);
        {
            let mut o = TBinaryOutputProtocol::new(&mut ch, true);
            o.write_message_begin(&TMessageIdentifier::new("run", TMessageType::Call, 3))
                .unwrap();
            o.write_list_begin(&TListIdentifier::new(TType::I64, 2)).unwrap();
            o.write_i64(-5).unwrap();
            o.write_i64(1 << 40).unwrap();
            o.write_string("héllo").unwrap();
            o.write_double(2.5).unwrap();
            o.write_bool(true).unwrap();
            o.flush().unwrap();
        }
        let bytes = framed(&ch.write_bytes());
        let mut p = BoundedBinaryInput::new(&bytes[..], 1 << 20);
        let m = p.read_message_begin().unwrap();
        assert_eq!((m.name.as_str(), m.sequence_number), ("run", 3));
        let l = p.read_list_begin().unwrap();
        assert_eq!(l.size, 2);
        assert_eq!((p.read_i64().unwrap(), p.read_i64().unwrap()), (-5, 1 << 40));
        assert_eq!(p.read_string().unwrap(), "héllo");
        assert_eq!(p.read_double().unwrap(), 2.5);
        assert!(p.read_bool().unwrap());
    }
}
