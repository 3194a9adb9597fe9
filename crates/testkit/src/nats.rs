//! A private nats-server with JetStream for one test.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// A running (or stopped) private nats-server. Killed when dropped.
pub struct NatsServer {
    port: u16,
    store: tempfile::TempDir,
    child: Option<Child>,
}

impl NatsServer {
    /// Start `nats-server -js` on a free loopback port with a fresh temp store.
    pub async fn start() -> anyhow::Result<Self> {
        let port = free_port()?;
        let store = tempfile::Builder::new().prefix("gridwork-nats-").tempdir()?;
        let mut server = Self { port, store, child: None };
        server.spawn().await?;
        Ok(server)
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Where JetStream keeps its files.
    pub fn store_dir(&self) -> PathBuf {
        self.store.path().to_path_buf()
    }

    /// Kill the server abruptly (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start it again on the same port with the same store.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.spawn().await
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let binary = std::env::var("NATS_SERVER_BIN").unwrap_or_else(|_| "nats-server".into());
        let child = Command::new(&binary)
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string(), "-js", "-sd"])
            .arg(self.store.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {binary}: install it with `make deps` (Debian package nats-server)"))?;
        self.child = Some(child);
        // Ready means JetStream answers, not merely that the port accepts.
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(client) = async_nats::connect(self.url()).await {
                // Any reply from the JetStream API means it is up (the typed
                // account-info call cannot parse 2.9's answer).
                if client.request("$JS.API.INFO", "".into()).await.is_ok() {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!("nats-server on port {} did not become ready", self.port);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
