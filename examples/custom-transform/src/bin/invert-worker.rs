//! Run with: PIPELINE_BROKER_URL=amqp://guest:guest@127.0.0.1:5672/%2f \
//!   cargo run -p example-custom-transform --bin invert-worker
//!
//! A transformer with the `invert` plugin, embedded with the builder; it
//! reads the same `PIPELINE_*` variables as `pipeline-transformer`.

use pipeline::Roles;

#[tokio::main]
async fn main() -> Result<(), pipeline::Error> {
    pipeline::cli::init_tracing(false, "info");
    let registry = example_custom_transform::registry()?;
    let running = pipeline::cli::ServeArgs::from_env()?
        .builder(Roles::TRANSFORMER, registry)?
        .start()
        .await?;
    println!("invert worker running");
    running.run_until_signal().await
}
