//! Versioned binary frame for [`Envelope`]s.
//!
//! Layout (all integers big-endian; see `docs/wire-format.md`):
//!
//! ```text
//! magic "PPLN" | version u8 | flags u8 | header_len u32 | header | part_count u16 | parts
//! header = id[16] job_id[16] attempt u32 created_at_ms i64
//!          event str16 tenant str16 spec str32 header_count u16 (key str16 value str32)*
//! part   = name str16 content_type str16 data_len u64 data
//! strN   = uN byte length, then UTF-8
//! ```
//!
//! Parts are raw bytes; decoding slices them out of the frame without copying.

use std::collections::BTreeMap;

use bytes::{BufMut, Bytes, BytesMut};
use uuid::Uuid;

use crate::envelope::{Envelope, Part};
use crate::error::{Error, Result};

/// First bytes of every frame.
pub const MAGIC: &[u8; 4] = b"PPLN";
/// The frame version this build writes.
pub const VERSION: u8 = 1;
/// Most parts a frame may carry.
pub const MAX_PARTS: usize = 256;
/// Most headers a frame may carry.
pub const MAX_HEADERS: usize = 1024;

/// Encode an envelope into one frame.
pub fn encode(env: &Envelope) -> Result<Bytes> {
    let mut header = BytesMut::with_capacity(128 + env.spec.len());
    header.put_slice(env.id.as_bytes());
    header.put_slice(env.job_id.as_bytes());
    header.put_u32(env.attempt);
    header.put_i64(env.created_at_ms);
    put_str16(&mut header, "event", &env.event)?;
    put_str16(&mut header, "tenant", &env.tenant)?;
    put_str32(&mut header, "spec", &env.spec)?;
    if env.headers.len() > MAX_HEADERS {
        return Err(Error::invalid(format!(
            "{} headers, at most {MAX_HEADERS} fit a frame",
            env.headers.len()
        )));
    }
    header.put_u16(env.headers.len() as u16);
    for (k, v) in &env.headers {
        put_str16(&mut header, "header name", k)?;
        put_str32(&mut header, "header value", v)?;
    }
    if env.parts.len() > MAX_PARTS {
        return Err(Error::invalid(format!(
            "{} parts, at most {MAX_PARTS} fit a frame",
            env.parts.len()
        )));
    }
    let parts_len: usize = env
        .parts
        .iter()
        .map(|p| 2 + p.name.len() + 2 + p.content_type.len() + 8 + p.data.len())
        .sum();
    let header_len = u32::try_from(header.len())
        .map_err(|_| Error::invalid("frame header over 4 GiB".to_string()))?;
    let mut out = BytesMut::with_capacity(4 + 2 + 4 + header.len() + 2 + parts_len);
    out.put_slice(MAGIC);
    out.put_u8(VERSION);
    out.put_u8(0);
    out.put_u32(header_len);
    out.put_slice(&header);
    out.put_u16(env.parts.len() as u16);
    for p in &env.parts {
        put_str16(&mut out, "part name", &p.name)?;
        put_str16(&mut out, "content type", &p.content_type)?;
        out.put_u64(p.data.len() as u64);
        out.put_slice(&p.data);
    }
    Ok(out.freeze())
}

/// Decode one frame. Any byte string gives `Ok` or `Err`, never a panic.
pub fn decode(frame: Bytes) -> Result<Envelope> {
    let mut r = Reader { buf: frame, pos: 0 };
    let magic = r.take(4, "magic")?;
    if magic.as_ref() != MAGIC {
        return Err(Error::MalformedFrame(
            "bad magic (not a pipeline frame)".into(),
        ));
    }
    let version = r.u8("version")?;
    if version != VERSION {
        return Err(Error::MalformedFrame(format!(
            "frame version {version} is not supported (this build reads {VERSION})"
        )));
    }
    let _flags = r.u8("flags")?;
    let header_len = r.u32("header length")? as usize;
    let header = r.take(header_len, "header")?;
    let mut h = Reader {
        buf: header,
        pos: 0,
    };
    let id = h.uuid("id")?;
    let job_id = h.uuid("job id")?;
    let attempt = h.u32("attempt")?;
    let created_at_ms = h.i64("created at")?;
    let event = h.str16("event")?;
    let tenant = h.str16("tenant")?;
    let spec = h.str32("spec")?;
    let header_count = h.u16("header count")? as usize;
    let mut headers = BTreeMap::new();
    for _ in 0..header_count {
        let k = h.str16("header name")?;
        let v = h.str32("header value")?;
        headers.insert(k, v);
    }
    // Bytes left in the header belong to newer minor revisions: skipped.
    let part_count = r.u16("part count")? as usize;
    if part_count > MAX_PARTS {
        return Err(Error::MalformedFrame(format!(
            "{part_count} parts, at most {MAX_PARTS} allowed"
        )));
    }
    let mut parts = Vec::with_capacity(part_count);
    for _ in 0..part_count {
        let name = r.str16("part name")?;
        let content_type = r.str16("content type")?;
        let len = r.u64("part length")?;
        let len = usize::try_from(len)
            .map_err(|_| Error::MalformedFrame("part length overflows".into()))?;
        let data = r.take(len, "part data")?;
        parts.push(Part {
            name,
            content_type,
            data,
        });
    }
    if r.pos != r.buf.len() {
        return Err(Error::MalformedFrame(format!(
            "{} trailing bytes after the last part",
            r.buf.len() - r.pos
        )));
    }
    Ok(Envelope {
        id,
        event,
        job_id,
        tenant,
        attempt,
        created_at_ms,
        spec,
        headers,
        parts,
    })
}

fn put_str16(out: &mut BytesMut, what: &str, s: &str) -> Result<()> {
    let len = u16::try_from(s.len())
        .map_err(|_| Error::invalid(format!("{what} is {} bytes, at most 65535", s.len())))?;
    out.put_u16(len);
    out.put_slice(s.as_bytes());
    Ok(())
}

fn put_str32(out: &mut BytesMut, what: &str, s: &str) -> Result<()> {
    let len =
        u32::try_from(s.len()).map_err(|_| Error::invalid(format!("{what} is over 4 GiB")))?;
    out.put_u32(len);
    out.put_slice(s.as_bytes());
    Ok(())
}

struct Reader {
    buf: Bytes,
    pos: usize,
}

impl Reader {
    fn take(&mut self, n: usize, what: &str) -> Result<Bytes> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|end| *end <= self.buf.len())
            .ok_or_else(|| {
                Error::MalformedFrame(format!(
                    "truncated {what}: need {n} bytes at offset {}, frame has {}",
                    self.pos,
                    self.buf.len()
                ))
            })?;
        let out = self.buf.slice(self.pos..end);
        self.pos = end;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let b = self.take(N, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(&b);
        Ok(out)
    }

    fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.array::<1>(what)?[0])
    }
    fn u16(&mut self, what: &str) -> Result<u16> {
        Ok(u16::from_be_bytes(self.array(what)?))
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_be_bytes(self.array(what)?))
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_be_bytes(self.array(what)?))
    }
    fn i64(&mut self, what: &str) -> Result<i64> {
        Ok(i64::from_be_bytes(self.array(what)?))
    }
    fn uuid(&mut self, what: &str) -> Result<Uuid> {
        Ok(Uuid::from_bytes(self.array(what)?))
    }
    fn string(&mut self, len: usize, what: &str) -> Result<String> {
        let b = self.take(len, what)?;
        String::from_utf8(b.to_vec())
            .map_err(|_| Error::MalformedFrame(format!("{what} is not UTF-8")))
    }
    fn str16(&mut self, what: &str) -> Result<String> {
        let len = self.u16(what)? as usize;
        self.string(len, what)
    }
    fn str32(&mut self, what: &str) -> Result<String> {
        let len = self.u32(what)? as usize;
        self.string(len, what)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Envelope {
        Envelope::new("image.submitted", Uuid::now_v7(), "acme")
            .with_spec("resize:800x600,grayscale")
            .with_header("filename", "cat.jpg")
            .with_part(Part::new(
                "original",
                "image/jpeg",
                Bytes::from_static(&[0xff, 0xd8, 0, 1, 2]),
            ))
            .with_part(Part::new("empty", "application/octet-stream", Bytes::new()))
    }

    #[test]
    fn roundtrip_keeps_everything() {
        let env = sample();
        let frame = encode(&env).unwrap();
        assert_eq!(decode(frame).unwrap(), env);
    }

    #[test]
    fn parts_are_raw_not_inflated() {
        let data = Bytes::from(vec![7u8; 8192]);
        let env =
            Envelope::new("e", Uuid::nil(), "t").with_part(Part::new("p", "image/jpeg", data));
        let frame = encode(&env).unwrap();
        assert!(frame.len() < 8192 + 128, "frame is {} bytes", frame.len());
    }

    #[test]
    fn rejects_wrong_magic_version_and_truncation() {
        let frame = encode(&sample()).unwrap();
        assert!(matches!(
            decode(Bytes::from_static(b"XXXX")),
            Err(Error::MalformedFrame(_))
        ));
        let mut v2 = frame.to_vec();
        v2[4] = 2;
        let err = decode(Bytes::from(v2)).unwrap_err().to_string();
        assert!(err.contains("version 2"), "{err}");
        for cut in 0..frame.len() {
            assert!(
                decode(frame.slice(..cut)).is_err(),
                "prefix of {cut} bytes decoded"
            );
        }
        let mut longer = frame.to_vec();
        longer.push(0);
        assert!(decode(Bytes::from(longer)).is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode(Bytes::from(data));
        }

        #[test]
        fn mutated_frames_never_panic(idx in 0usize..200, byte in any::<u8>()) {
            let mut frame = encode(&sample()).unwrap().to_vec();
            let i = idx % frame.len();
            frame[i] = byte;
            let _ = decode(Bytes::from(frame));
        }

        #[test]
        fn valid_prefix_random_tail_never_panics(tail in proptest::collection::vec(any::<u8>(), 0..256)) {
            let mut frame = MAGIC.to_vec();
            frame.push(VERSION);
            frame.extend(tail);
            let _ = decode(Bytes::from(frame));
        }

        #[test]
        fn roundtrip_arbitrary(event in ".{0,40}", tenant in ".{0,20}", spec in ".{0,80}",
                               hk in proptest::collection::btree_map(".{0,10}", ".{0,30}", 0..5),
                               data in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let mut env = Envelope::new(event, Uuid::now_v7(), tenant).with_spec(spec)
                .with_part(Part::new("original", "image/png", Bytes::from(data)));
            env.headers = hk;
            let back = decode(encode(&env).unwrap()).unwrap();
            prop_assert_eq!(back, env);
        }
    }
}
