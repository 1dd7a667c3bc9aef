//! `pipeline-api`: the HTTP API (with its results consumer) alone, for deployments that scale each role
//! separately against a shared broker and database. Same flags and
//! variables as `pipeline serve`.

fn main() -> std::process::ExitCode {
    pipeline::cli::run_role(
        pipeline::Roles::API,
        pipeline::TransformRegistry::with_builtins(),
    )
}
