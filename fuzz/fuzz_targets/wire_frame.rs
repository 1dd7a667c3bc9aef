//! The wire frame decoder takes any bytes a broker hands over: it decodes
//! them or says why not, and what it decodes encodes back to a frame that
//! decodes to the same envelope.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use pipeline_core::wire;

fuzz_target!(|data: &[u8]| {
    let Ok(envelope) = wire::decode(Bytes::copy_from_slice(data)) else {
        return;
    };
    let frame = wire::encode(&envelope).expect("a decoded envelope encodes");
    let again = wire::decode(frame).expect("an encoded envelope decodes");
    assert_eq!(again, envelope);
});
