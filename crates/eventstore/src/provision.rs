//! Stream provisioning at start-up and the server-version safety check.
//!
//! Each bounded context owns one stream (`GRID` on `grid.>`, …) and one snapshot
//! bucket. Start-up creates them if absent and updates them to the configured
//! settings if they drifted; running it twice changes nothing.

use std::time::Duration;

use async_nats::jetstream::{self, stream};
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

/// Refuse server versions that are unsafe for the requested replica count, and
/// return warnings for ones that are merely weaker than production needs.
///
/// - replicas > 1 before 2.9.21: two writers with the same expected sequence
///   could both be accepted on R3. Refused.
/// - before 2.10: no `sync_interval: always`, so an acknowledged write can be lost
///   on power failure. Warned.
pub fn check_server_version(version: &str, replicas: usize) -> Result<Vec<String>, StoreError> {
    let parsed = parse_version(version)
        .ok_or_else(|| StoreError::Unsafe(format!("cannot parse nats-server version {version:?}")))?;
    let mut warnings = Vec::new();
    if replicas > 1 && parsed < (2, 9, 21) {
        return Err(StoreError::Unsafe(format!(
            "nats-server {version} may accept two writers with the same expected sequence on replicated streams; \
             replicas = {replicas} needs nats-server >= 2.9.21 (production: >= 2.11 with sync_interval: always)"
        )));
    }
    if parsed < (2, 10, 0) {
        warnings.push(format!(
            "nats-server {version} cannot fsync on every acknowledged write (sync_interval: always needs >= 2.10, \
             production should run >= 2.11): acknowledged commits can be lost on power failure"
        ));
    }
    Ok(warnings)
}

fn parse_version(v: &str) -> Option<(u32, u32, u32)> {
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
        // The bucket's backing stream, made directly: the client's
        // create_key_value first asks for account info, which it cannot parse
        // from a 2.9 server. The settings are the KV conventions (ADR-8).
        js.get_or_create_stream(stream::Config {
            name: format!("KV_{bucket}"),
            subjects: vec![format!("$KV.{bucket}.>")],
            max_messages_per_subject: 1,
            discard: stream::DiscardPolicy::New,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            num_replicas: spec.replicas,
            storage: spec.storage,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .map_err(unavailable)?;
    }
    Ok(())
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::check_server_version;

    #[test]
    fn replicated_streams_are_refused_before_2_9_21() {
        assert!(check_server_version("2.9.10", 3).is_err());
        assert!(check_server_version("2.9.20", 3).is_err());
        assert!(check_server_version("2.9.21", 3).is_ok());
        assert!(check_server_version("2.11.4", 3).is_ok());
    }

    #[test]
    fn single_replica_runs_on_2_9_with_a_durability_warning() {
        let warnings = check_server_version("2.9.10", 1).expect("R1 on 2.9.10 is allowed");
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].contains("sync_interval"));
        assert!(check_server_version("v2.10.22", 1).expect("ok").is_empty());
        assert!(check_server_version("2.12.0-beta.1", 1).expect("ok").is_empty());
    }

    #[test]
    fn an_unparseable_version_is_refused() {
        assert!(check_server_version("banana", 1).is_err());
    }
}
