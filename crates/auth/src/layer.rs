//! The tower layer in front of every service's gRPC handlers.

use std::sync::Arc;
use std::task::{Context, Poll};

use crate::Verifier;

/// Services open to every caller: probes and discovery.
pub const OPEN_SERVICES: [&str; 3] =
    ["/grpc.health.v1.Health/", "/grpc.reflection.v1.ServerReflection/", "/grpc.reflection.v1alpha.ServerReflection/"];

/// Requires a verified bearer token on every call but [`OPEN_SERVICES`] and
/// the permission [`crate::policy::RPCS`] names for the RPC, and hands the
/// handler an `Arc<`[`crate::Access`]`>` (the caller and that permission) as a
/// request extension, for the scope checks that need the request's target. A call
/// without a token is answered `UNAUTHENTICATED`, one without the permission
/// (or to an RPC the table lacks) `PERMISSION_DENIED`, here: it never reaches
/// a handler, so it writes nothing.
#[derive(Clone, Debug)]
pub struct AuthLayer {
    verifier: Arc<Verifier>,
}

impl AuthLayer {
    /// Verify with `verifier`.
    pub fn new(verifier: Arc<Verifier>) -> Self {
        Self { verifier }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = Authenticate<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Authenticate { inner, verifier: self.verifier.clone() }
    }
}

/// The service [`AuthLayer`] makes.
#[derive(Clone, Debug)]
pub struct Authenticate<S> {
    inner: S,
    verifier: Arc<Verifier>,
}

fn bearer(headers: &http::HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

impl<S, B, R> tower::Service<http::Request<B>> for Authenticate<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    R: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures::future::Either<S::Future, std::future::Ready<Result<S::Response, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        use futures::future::Either;
        let path = request.uri().path();
        if OPEN_SERVICES.iter().any(|open| path.starts_with(open)) {
            return Either::Left(self.inner.call(request));
        }
        let verified = match bearer(request.headers()) {
            None => Err(tonic::Status::unauthenticated(
                "no bearer token: send `authorization: Bearer <JWT>` (gridctl login makes one in development)",
            )),
            Some(token) => self.verifier.verify(token).map_err(tonic::Status::from),
        }
        .and_then(|principal| match crate::policy::permission_for(path) {
            None => Err(tonic::Status::permission_denied(format!(
                "{path}: no permission is defined for this RPC (crates/auth/src/policy.rs), so nobody may call it"
            ))),
            Some(permission) if !permission.held_by(&principal) => Err(permission.denied()),
            Some(permission) => Ok(crate::Access { principal, permission }),
        });
        match verified {
            Ok(access) => {
                request.extensions_mut().insert(Arc::new(access));
                Either::Left(self.inner.call(request))
            }
            Err(status) => Either::Right(std::future::ready(Ok(status.into_http()))),
        }
    }
}
