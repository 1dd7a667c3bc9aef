//! `pipeline-activity`: the activity log writer alone, for deployments that scale each role
//! separately against a shared broker and database. Same flags and
//! variables as `pipeline serve`.

fn main() -> std::process::ExitCode {
    pipeline::cli::run_role(
        pipeline::Roles::ACTIVITY,
        pipeline::TransformRegistry::with_builtins(),
    )
}
