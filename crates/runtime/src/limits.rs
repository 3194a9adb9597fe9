//! Request limits every service applies, in front of its handlers: the largest
//! request message it decodes, and a per-principal rate of write RPCs (a token
//! bucket per verified subject). Either refusal is `RESOURCE_EXHAUSTED`, and a
//! refused write is refused before its handler runs, so it writes nothing.
//! Every refusal (these and the authentication layer's) is counted in
//! `grpc_refusals_total{code}`.

use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::future::Either;
use gridwork_auth::Access;

/// HTTP/2 streams one connection may open, and calls it may have in flight.
pub const MAX_CONCURRENT_STREAMS: u32 = 256;

/// The longest any call may run.
pub const CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// The limits' settings.
#[derive(Debug, Clone, clap::Args)]
pub struct LimitsConfig {
    /// The largest request message a service decodes, in bytes (a street's
    /// boundary with thousands of vertices fits); larger is RESOURCE_EXHAUSTED.
    #[arg(long, env = "MAX_REQUEST_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_request_bytes: usize,
    /// Write RPCs one principal may make per second, sustained (a hotline
    /// call-taker files a report a minute; a camera feed a few a second).
    #[arg(long, env = "WRITE_RATE_PER_SECOND", default_value_t = 20.0)]
    pub write_rate_per_second: f64,
    /// Write RPCs one principal may make at once before the rate applies.
    #[arg(long, env = "WRITE_BURST", default_value_t = 200)]
    pub write_burst: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self { max_request_bytes: 4 * 1024 * 1024, write_rate_per_second: 20.0, write_burst: 200 }
    }
}

/// A token bucket.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The write rate of every principal seen lately (idle ones forgotten).
#[derive(Clone)]
pub struct WriteRate {
    rate: f64,
    burst: f64,
    buckets: moka::sync::Cache<String, Arc<Mutex<Bucket>>>,
}

impl std::fmt::Debug for WriteRate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteRate").field("rate", &self.rate).field("burst", &self.burst).finish()
    }
}

impl WriteRate {
    /// `rate` writes a second per principal, `burst` at once.
    pub fn new(rate: f64, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        // A bucket idle long enough to refill is full again: forgetting it
        // changes nothing, and bounds the memory to the active principals.
        let idle = Duration::from_secs_f64((burst / rate.max(1e-3)).clamp(1.0, 3600.0));
        Self {
            rate: rate.max(0.0),
            burst,
            buckets: moka::sync::Cache::builder().max_capacity(200_000).time_to_idle(idle).build(),
        }
    }

    /// Take one write for `subject` at `now`: `Err(wait)` if its bucket is
    /// empty (how long until the next token).
    pub fn take(&self, subject: &str, now: Instant) -> Result<(), Duration> {
        let bucket =
            self.buckets.get_with_by_ref(subject, || Arc::new(Mutex::new(Bucket { tokens: self.burst, at: now })));
        let mut b = bucket.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * self.rate).min(self.burst);
        b.at = now.max(b.at);
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else if self.rate > 0.0 {
            Err(Duration::from_secs_f64((1.0 - b.tokens) / self.rate))
        } else {
            Err(Duration::MAX)
        }
    }
}

/// The tower layer: after authentication (it reads the caller's [`Access`]),
/// before the handlers.
#[derive(Clone, Debug)]
pub struct LimitsLayer {
    rate: WriteRate,
}

impl LimitsLayer {
    /// Limits from `config`.
    pub fn new(config: &LimitsConfig) -> Self {
        Self { rate: WriteRate::new(config.write_rate_per_second, config.write_burst) }
    }
}

impl<S> tower::Layer<S> for LimitsLayer {
    type Service = Limits<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Limits { inner, rate: self.rate.clone() }
    }
}

/// The service [`LimitsLayer`] makes.
#[derive(Clone, Debug)]
pub struct Limits<S> {
    inner: S,
    rate: WriteRate,
}

impl<S, B, R> tower::Service<http::Request<B>> for Limits<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    R: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<S::Future, std::future::Ready<Result<S::Response, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if let Some(access) = request.extensions().get::<Arc<Access>>()
            && access.permission.writes()
            && let Err(wait) = self.rate.take(access.subject(), Instant::now())
        {
            use tonic_types::StatusExt as _;
            let rate = format!("{:.3}", self.rate.rate);
            let message = format!(
                "{} is past its write rate ({} a second, {} at once, WRITE_RATE_PER_SECOND and WRITE_BURST); \
                 retry in {} ms",
                access.subject(),
                rate.trim_end_matches('0').trim_end_matches('.'),
                self.rate.burst,
                wait.as_millis().clamp(1, 3_600_000)
            );
            // RetryInfo: a client honouring it (gRPC retry policies) waits as told.
            let status = tonic::Status::with_error_details(
                tonic::Code::ResourceExhausted,
                message,
                tonic_types::ErrorDetails::with_retry_info(Some(wait.min(Duration::from_secs(3600)))),
            );
            return Either::Right(std::future::ready(Ok(status.into_http())));
        }
        Either::Left(self.inner.call(request))
    }
}

/// The outermost layer's response map (`tower::util::MapResponseLayer`):
/// counts every refusal — the authentication layer's, the rate's, a
/// handler's — makes tonic's "message too large" (`OUT_OF_RANGE`) the
/// `RESOURCE_EXHAUSTED` gRPC asks for, and an undecodable request (tonic's
/// `INTERNAL`) the caller's `INVALID_ARGUMENT`.
pub fn refusal<R: Default>(response: http::Response<R>) -> http::Response<R> {
    let code = response.headers().get("grpc-status").and_then(|v| v.to_str().ok()?.parse::<i32>().ok());
    let Some(code) = code.map(tonic::Code::from_i32) else { return response };
    let too_large =
        code == tonic::Code::OutOfRange
            && response.headers().get("grpc-message").and_then(|m| m.to_str().ok()).is_some_and(|m| {
                m.contains("message%20length%20too%20large") || m.contains("message length too large")
            });
    // tonic answers a request that is not the RPC's message (prost cannot
    // decode it) INTERNAL; it is the caller's error, not the service's.
    let undecodable = code == tonic::Code::Internal
        && response
            .headers()
            .get("grpc-message")
            .and_then(|m| m.to_str().ok())
            .is_some_and(|m| m.starts_with("failed%20to%20decode") || m.starts_with("failed to decode"));
    if undecodable {
        return tonic::Status::invalid_argument(
            "the request is not a valid message of this RPC (protobuf decoding failed)",
        )
        .into_http();
    }
    if too_large {
        count(tonic::Code::ResourceExhausted);
        let status = tonic::Status::resource_exhausted(
            "the request message is larger than this service accepts (MAX_REQUEST_BYTES)",
        );
        return status.into_http();
    }
    count(code);
    response
}

fn count(code: tonic::Code) {
    if matches!(code, tonic::Code::Unauthenticated | tonic::Code::PermissionDenied | tonic::Code::ResourceExhausted) {
        metrics::counter!("grpc_refusals_total", "code" => format!("{code:?}")).increment(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tonic_s_message_too_large_becomes_resource_exhausted_and_other_answers_pass() {
        let too_large = tonic::Status::out_of_range(
            "Error, decoded message length too large: found 5000000 bytes, the limit is: 4194304 bytes",
        )
        .into_http::<tonic::body::Body>();
        let mapped = refusal(too_large);
        assert_eq!(mapped.headers().get("grpc-status").and_then(|v| v.to_str().ok()), Some("8"));
        let undecodable = tonic::Status::internal("failed to decode Protobuf message: invalid wire type")
            .into_http::<tonic::body::Body>();
        assert_eq!(refusal(undecodable).headers().get("grpc-status").and_then(|v| v.to_str().ok()), Some("3"));
        let internal = tonic::Status::internal("internal error").into_http::<tonic::body::Body>();
        assert_eq!(refusal(internal).headers().get("grpc-status").and_then(|v| v.to_str().ok()), Some("13"));
        let other = tonic::Status::out_of_range("page past the end").into_http::<tonic::body::Body>();
        assert_eq!(refusal(other).headers().get("grpc-status").and_then(|v| v.to_str().ok()), Some("11"));
    }

    #[test]
    fn a_principal_gets_its_burst_then_its_rate_and_others_are_not_held_up() {
        let rate = WriteRate::new(2.0, 3);
        let t0 = Instant::now();
        for _ in 0..3 {
            rate.take("hotline-7", t0).expect("within the burst");
        }
        let wait = rate.take("hotline-7", t0).expect_err("burst spent");
        assert!(wait > Duration::from_millis(400) && wait <= Duration::from_millis(500), "{wait:?}");
        rate.take("hotline-8", t0).expect("another principal has its own bucket");
        rate.take("hotline-7", t0 + Duration::from_millis(500)).expect("one token back after 1/rate");
        assert!(rate.take("hotline-7", t0 + Duration::from_millis(500)).is_err());
        // Idle for long, the bucket is full again but never above the burst.
        let later = t0 + Duration::from_secs(60);
        for _ in 0..3 {
            rate.take("hotline-7", later).expect("refilled");
        }
        assert!(rate.take("hotline-7", later).is_err(), "never more than the burst");
    }
}
