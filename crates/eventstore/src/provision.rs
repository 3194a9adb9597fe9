//! Stream provisioning at start-up and the server-version safety check.
//!
//! Each bounded context owns one stream (`GRID` on `grid.>`, …) and one snapshot
//! bucket. Start-up creates them if absent and updates them to the configured
//! settings if they drifted; running it twice changes nothing.

use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};
use tracing::{info, warn};

use crate::error::StoreError;

/// What a context's stream must look like.
#[derive(Debug, Clone)]
pub struct StreamSpec {
    /// Stream name, e.g. `"GRID"`.
    pub name: String,
    /// Subjects, e.g. `["grid.>"]`.
    pub subjects: Vec<String>,
    /// Replicas: 1 in development, 3 in production.
    pub replicas: usize,
    /// Server-side dedupe window for `Nats-Msg-Id`.
    pub duplicate_window: Duration,
    /// File (default) or memory storage.
    pub storage: stream::StorageType,
    /// Refuse message deletion and purges: the log is the ground truth, and the
    /// cold-load back-pointer chain must never break.
    pub immutable: bool,
}

impl StreamSpec {
    /// An event stream for `context`: name upper-cased, subjects `<context>.>`,
    /// file storage, two-minute dedupe window, immutable.
    pub fn events(context: &str, replicas: usize) -> Self {
        Self {
            name: context.to_ascii_uppercase(),
            subjects: vec![format!("{context}.>")],
            replicas,
            duplicate_window: Duration::from_secs(120),
            storage: stream::StorageType::File,
            immutable: true,
        }
    }

    /// The KV bucket holding this stream's aggregate snapshots.
    pub fn snapshot_bucket(&self) -> String {
        format!("SNAPSHOTS_{}", self.name)
    }

    fn config(&self) -> stream::Config {
        stream::Config {
            name: self.name.clone(),
            subjects: self.subjects.clone(),
            num_replicas: self.replicas,
            duplicate_window: self.duplicate_window,
            storage: self.storage,
            deny_delete: self.immutable,
            deny_purge: self.immutable,
            allow_direct: true,
            discard: stream::DiscardPolicy::Old,
            retention: stream::RetentionPolicy::Limits,
            ..Default::default()
        }
    }
}

/// Oldest nats-server the kernel runs on at all: async-nats cannot parse 2.9's
/// account info, and 2.9 has no `sync_interval`.
pub const MIN_SERVER_VERSION: (u32, u32, u32) = (2, 10, 0);

/// Oldest nats-server allowed under replicated (R3) streams: the 2.12 line's
/// fixes after Jepsen's 2.12.1 analysis (acknowledged writes lost or reordered
/// under leader changes) and the R3 expected-sequence race fixed in 2.9.21.
pub const MIN_REPLICATED_SERVER_VERSION: (u32, u32, u32) = (2, 12, 3);

/// Refuse server versions that are unsafe for the requested replica count, and
/// return warnings for ones that are merely weaker than production needs.
///
/// - before [`MIN_SERVER_VERSION`]: refused, whatever the replicas.
/// - replicas > 1 before [`MIN_REPLICATED_SERVER_VERSION`]: refused.
pub fn check_server_version(version: &str, replicas: usize) -> Result<Vec<String>, StoreError> {
    let parsed = parse_version(version)
        .ok_or_else(|| StoreError::Unsafe(format!("cannot parse nats-server version {version:?}")))?;
    let dotted = |(a, b, c): (u32, u32, u32)| format!("{a}.{b}.{c}");
    if parsed < MIN_SERVER_VERSION {
        return Err(StoreError::Unsafe(format!(
            "nats-server {version} is too old: Gridwork needs >= {} (run the pinned server `make deps` installs)",
            dotted(MIN_SERVER_VERSION)
        )));
    }
    if replicas > 1 && parsed < MIN_REPLICATED_SERVER_VERSION {
        return Err(StoreError::Unsafe(format!(
            "nats-server {version} can lose or reorder acknowledged writes on replicated streams; replicas = \
             {replicas} needs nats-server >= {} (with sync_interval: always)",
            dotted(MIN_REPLICATED_SERVER_VERSION)
        )));
    }
    let mut warnings = Vec::new();
    if replicas == 1 {
        warnings.push(
            "streams have one replica: fine for development, but production runs R3 on a three-node cluster".into(),
        );
    }
    Ok(warnings)
}

pub(crate) fn parse_version(v: &str) -> Option<(u32, u32, u32)> {
    let core = v.trim_start_matches('v').split(['-', '+']).next()?;
    let mut parts = core.split('.').map(|p| p.parse::<u32>().ok());
    Some((parts.next()??, parts.next()??, parts.next().flatten().unwrap_or(0)))
}

/// Create or update the stream and its snapshot bucket to match `spec`, after
/// checking the server version. Idempotent.
pub async fn ensure_stream(
    client: &async_nats::Client,
    js: &jetstream::Context,
    spec: &StreamSpec,
) -> Result<(), StoreError> {
    let version = client.server_info().version;
    for warning in check_server_version(&version, spec.replicas)? {
        warn!(stream = %spec.name, "{warning}");
    }
    let wanted = spec.config();
    match js.get_stream(&spec.name).await {
        Ok(mut existing) => {
            let info = existing.info().await.map_err(unavailable)?;
            let current = &info.config;
            refuse_lossy(current, &wanted)?;
            if current.subjects != wanted.subjects
                || current.num_replicas != wanted.num_replicas
                || current.duplicate_window != wanted.duplicate_window
                || current.deny_delete != wanted.deny_delete
                || current.deny_purge != wanted.deny_purge
                || !current.allow_direct
            {
                if current.storage != wanted.storage {
                    return Err(StoreError::Unsafe(format!(
                        "stream {} exists with {:?} storage; storage cannot be changed in place",
                        spec.name, current.storage
                    )));
                }
                info!(stream = %spec.name, "updating stream configuration");
                js.update_stream(wanted).await.map_err(unavailable)?;
            }
        }
        Err(_) => {
            info!(stream = %spec.name, "creating stream");
            js.create_stream(wanted).await.map_err(unavailable)?;
        }
    }
    let bucket = spec.snapshot_bucket();
    if js.get_key_value(&bucket).await.is_err() {
        js.create_key_value(kv::Config {
            bucket,
            history: 1,
            num_replicas: spec.replicas,
            storage: spec.storage,
            ..Default::default()
        })
        .await
        .map_err(unavailable)?;
    }
    Ok(())
}

/// An event stream keeps every event for ever: one that exists with a limit
/// that deletes (an age, a count, a size, a per-subject cap) or another
/// retention was not made by its owner's settings — perhaps by a principal
/// allowed only to create it — and may already have lost events. The service
/// refuses to start on it rather than write into it.
fn refuse_lossy(current: &stream::Config, wanted: &stream::Config) -> Result<(), StoreError> {
    let mut found = Vec::new();
    if current.storage != wanted.storage {
        found.push(format!("{:?} storage", current.storage));
    }
    if current.mirror.is_some() || current.sources.as_ref().is_some_and(|s| !s.is_empty()) {
        found.push("a mirror or sources".into());
    }
    if current.retention != stream::RetentionPolicy::Limits {
        found.push(format!("retention {:?}", current.retention));
    }
    if current.max_age != Duration::ZERO {
        found.push(format!("max_age {:?}", current.max_age));
    }
    if current.max_messages > 0 {
        found.push(format!("max_msgs {}", current.max_messages));
    }
    if current.max_bytes > 0 {
        found.push(format!("max_bytes {}", current.max_bytes));
    }
    if current.max_messages_per_subject > 0 {
        found.push(format!("max_msgs_per_subject {}", current.max_messages_per_subject));
    }
    if current.sealed {
        found.push("sealed".into());
    }
    if found.is_empty() {
        return Ok(());
    }
    Err(StoreError::Unsafe(format!(
        "stream {} exists with settings that delete or refuse events ({}): an event stream keeps everything; \
         check how it was made before serving on it",
        current.name,
        found.join(", ")
    )))
}

/// The stream of another context that this service projects: there as it
/// is, or created as its owner would create it if it is not there yet (so
/// services start in any order). Never updated and no snapshot bucket: both
/// are the owner's, and a service's NATS user may change only its own stream.
pub async fn ensure_read_stream(
    client: &async_nats::Client,
    js: &jetstream::Context,
    spec: &StreamSpec,
) -> Result<(), StoreError> {
    if let Ok(mut existing) = js.get_stream(&spec.name).await {
        let info = existing.info().await.map_err(unavailable)?;
        return refuse_lossy(&info.config, &spec.config());
    }
    check_server_version(&client.server_info().version, spec.replicas)?;
    info!(stream = %spec.name, "creating a projected stream its owner has not created yet");
    match js.create_stream(spec.config()).await {
        Ok(_) => Ok(()),
        // Its owner (or another reader) created it meanwhile: as it should?
        Err(e) => match js.get_stream(&spec.name).await {
            Ok(mut existing) => {
                let info = existing.info().await.map_err(unavailable)?;
                refuse_lossy(&info.config, &spec.config())
            }
            Err(_) => Err(unavailable(e)),
        },
    }
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::check_server_version;

    #[test]
    fn an_event_stream_with_a_deleting_limit_is_refused() {
        let spec = super::StreamSpec::events("grid", 1);
        assert!(super::refuse_lossy(&spec.config(), &spec.config()).is_ok(), "as its owner makes it");
        for lossy in [
            async_nats::jetstream::stream::Config { max_age: std::time::Duration::from_secs(60), ..spec.config() },
            async_nats::jetstream::stream::Config { max_messages_per_subject: 1, ..spec.config() },
            async_nats::jetstream::stream::Config {
                retention: async_nats::jetstream::stream::RetentionPolicy::WorkQueue,
                ..spec.config()
            },
            async_nats::jetstream::stream::Config { max_bytes: 1 << 20, ..spec.config() },
            async_nats::jetstream::stream::Config {
                storage: async_nats::jetstream::stream::StorageType::Memory,
                ..spec.config()
            },
        ] {
            let err = super::refuse_lossy(&lossy, &spec.config()).expect_err("lossy");
            assert!(err.to_string().contains("keeps everything"), "{err}");
        }
    }

    #[test]
    fn servers_older_than_2_10_are_refused() {
        assert!(check_server_version("2.9.10", 1).is_err());
        assert!(check_server_version("2.9.25", 3).is_err());
        assert!(check_server_version("v2.10.22", 1).is_ok());
    }

    #[test]
    fn replicated_streams_need_a_server_with_the_2_12_fixes() {
        assert!(check_server_version("2.10.22", 3).is_err());
        assert!(check_server_version("2.12.1", 3).is_err());
        assert!(check_server_version("2.12.8", 3).expect("2.12.8 at R3 is safe").is_empty());
        assert!(check_server_version("2.14.0-beta.1", 3).is_ok());
    }

    #[test]
    fn a_single_replica_runs_with_a_warning_that_production_is_r3() {
        let warnings = check_server_version("2.12.8", 1).expect("R1 is allowed");
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].contains("R3"));
    }

    #[test]
    fn an_unparseable_version_is_refused() {
        assert!(check_server_version("banana", 1).is_err());
    }
}
