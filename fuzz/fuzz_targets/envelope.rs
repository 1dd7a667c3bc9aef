//! Every role reads whatever envelope a frame decodes to (any event, any
//! headers, any parts, any `info` JSON) without panicking: it understands
//! it or gives a reason.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use pipeline_core::services::fuzzing::read_as_every_role;
use pipeline_core::wire;

fuzz_target!(|data: &[u8]| {
    if let Ok(envelope) = wire::decode(Bytes::copy_from_slice(data)) {
        read_as_every_role(&envelope);
    }
});
