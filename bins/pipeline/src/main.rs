//! `pipeline`: every role in one process (`serve`) or one at a time (`api`,
//! `transformer`, `save2db`, `activity`), the load and benchmark tools, and
//! the maintenance commands. `pipeline --help` lists them.

fn main() -> std::process::ExitCode {
    pipeline::cli::run(pipeline::TransformRegistry::with_builtins())
}
