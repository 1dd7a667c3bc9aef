//! `pipeline-api`: the HTTP API (with its results consumer) alone, for deployments that scale each role
//! separately against a shared broker and database. Flags and variables are
//! those of `pipeline serve`.

fn main() -> std::process::ExitCode {
    pipeline::role_main(pipeline::serve::Roles::API)
}
