//! The server's batched direct get (nats-server ≥ 2.11): every commit on one
//! subject after a sequence, in one request, from any replica.
//!
//! async-nats 0.51 has no API for it, so this sends the raw request
//! (`$JS.API.DIRECT.GET.<stream>` with `{"seq", "next_by_subj", "batch"}`) and
//! collects the replies up to the server's end-of-batch status (204 EOB). Like
//! every direct get it may be answered by a follower that lags; callers check
//! what came back against a head they trust.

use std::time::Duration;

use async_nats::jetstream::message::StreamMessage;
use async_nats::{HeaderMap, StatusCode};
use futures::StreamExt as _;
use serde::Serialize;

use crate::envelope::RecordedCommit;
use crate::error::StoreError;

/// How long to wait for each reply of a batch.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// Bytes asked for per batch (the server stops after the message that passes
/// it), well below the client's slow-consumer limits.
const MAX_BYTES: usize = 4 << 20;

/// Commits on a subject in stream order, and whether the server has more.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    pub commits: Vec<RecordedCommit>,
    /// Messages on the subject after the last one returned (`Nats-Num-Pending`
    /// of the end-of-batch status), as the answering replica saw it;
    /// `u64::MAX` when a replica that does not batch answered (unknown).
    pub pending: u64,
}

#[derive(Serialize)]
struct Request<'a> {
    seq: u64,
    next_by_subj: &'a str,
    batch: usize,
    max_bytes: usize,
}

/// Whether a server of this version answers batched direct gets.
pub(crate) fn server_supports_batches(version: &str) -> bool {
    crate::provision::parse_version(version).is_some_and(|v| (v.0, v.1) >= (2, 11))
}

/// Up to `limit` commits on `subject` with a sequence above `after`.
pub(crate) async fn commits_after(
    client: &async_nats::Client,
    stream: &str,
    subject: &str,
    after: u64,
    limit: usize,
) -> Result<Batch, StoreError> {
    let unavailable = |e: &dyn std::fmt::Display| StoreError::Unavailable(format!("batched get of {subject}: {e}"));
    let request = serde_json::to_vec(&Request {
        seq: after + 1,
        next_by_subj: subject,
        batch: limit.max(1),
        max_bytes: MAX_BYTES,
    })
    .map_err(|e| unavailable(&e))?;
    let inbox = client.new_inbox();
    let mut replies = client.subscribe(inbox.clone()).await.map_err(|e| unavailable(&e))?;
    client
        .publish_with_reply(format!("$JS.API.DIRECT.GET.{stream}"), inbox, request.into())
        .await
        .map_err(|e| unavailable(&e))?;
    let mut batch = Batch::default();
    loop {
        let reply = match tokio::time::timeout(REPLY_TIMEOUT, replies.next()).await {
            Ok(Some(reply)) => reply,
            Ok(None) => return Err(unavailable(&"connection closed")),
            Err(_) => return Err(unavailable(&format!("no reply for {REPLY_TIMEOUT:?}"))),
        };
        match reply.status {
            None | Some(StatusCode::OK) => {
                // Every message of a batch carries Nats-Num-Pending; a replica
                // that does not batch (older than 2.11) answers one message
                // without it, and no end of batch follows.
                let batching = reply.headers.as_ref().is_some_and(|h| h.get("Nats-Num-Pending").is_some());
                let message = StreamMessage::try_from(reply).map_err(|e| unavailable(&e))?;
                batch.commits.push(RecordedCommit::from_stream_message(message)?);
                if !batching {
                    batch.pending = u64::MAX;
                    return Ok(batch);
                }
            }
            // End of batch (204 EOB).
            Some(status) if status.as_u16() == 204 => {
                batch.pending = pending(reply.headers.as_ref());
                return Ok(batch);
            }
            // Nothing on the subject after `after`.
            Some(StatusCode::NOT_FOUND) if batch.commits.is_empty() => return Ok(batch),
            Some(status) => {
                return Err(unavailable(&format!(
                    "status {status} {}",
                    reply.description.as_deref().unwrap_or_default()
                )));
            }
        }
    }
}

fn pending(headers: Option<&HeaderMap>) -> u64 {
    headers.and_then(|h| h.get("Nats-Num-Pending")).and_then(|v| v.as_str().parse().ok()).unwrap_or(0)
}
