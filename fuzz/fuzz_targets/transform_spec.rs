//! The transform spec language: any text parses or is refused; what parses
//! prints back to text that parses to the same spec, and checking it
//! against the built-in transforms (and against a header's size, as the
//! upload does) never panics.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use pipeline_core::transform::{ImageLimits, Probe, TransformRegistry, TransformSpec, check_spec};

fuzz_target!(|data: &[u8]| {
    static REGISTRY: OnceLock<TransformRegistry> = OnceLock::new();
    let registry = REGISTRY.get_or_init(TransformRegistry::with_builtins);
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(spec) = TransformSpec::parse(text) else {
        return;
    };
    let printed = spec.to_string();
    let again = TransformSpec::parse(&printed).expect("a printed spec parses");
    assert_eq!(again, spec, "{printed:?}");
    if registry.validate(&spec).is_ok() {
        let probe = Probe {
            format: image::ImageFormat::Png,
            width: 1 + u32::from(data.first().copied().unwrap_or(0)) * 97,
            height: 1 + u32::from(data.last().copied().unwrap_or(0)) * 89,
        };
        let _ = check_spec(registry, &ImageLimits::default(), &spec, &probe);
    }
});
