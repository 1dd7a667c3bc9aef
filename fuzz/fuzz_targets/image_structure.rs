//! The upload checks read untrusted files: the header probe and the
//! structure check (PNG chunks and CRCs, the JPEG segment chain...) accept
//! or refuse any bytes without panicking, and a file the structure check
//! accepts has a header the probe reads the same way.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pipeline_core::transform::ImageLimits;
use pipeline_core::transform::codec;

fuzz_target!(|data: &[u8]| {
    let limits = ImageLimits::default();
    let probed = codec::probe(data, &limits);
    if let Ok(checked) = codec::check_structure(data, &limits) {
        assert_eq!(
            probed.ok(),
            Some(checked),
            "the structure check accepted what the probe refuses"
        );
    }
});
