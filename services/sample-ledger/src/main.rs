use clap::Parser as _;
use gridwork_sample_ledger::{Config, SERVICE, build_default};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let _telemetry = gridwork_runtime::telemetry::init(SERVICE, config.common.log_format)?;
    let app = build_default(&config.common).await?;
    app.run_until_stopped(&config.common).await
}
