//! Run with: cargo run -p example-custom-transform -- serve
//!
//! The whole command line of `pipeline` (every role, `serve`, `bench`,
//! the maintenance commands; same flags and `PIPELINE_*` variables) with
//! the `invert` plugin inside. Try it:
//! `curl -F files=@samples/red.png 'http://127.0.0.1:4555/v1/images?transform=invert'`.

use std::process::ExitCode;

fn main() -> ExitCode {
    match example_custom_transform::registry() {
        Ok(registry) => pipeline::cli::run(registry),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
