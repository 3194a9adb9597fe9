//! Who is calling: every RPC but health and reflection carries a bearer JWT
//! (RS256 or EdDSA), verified against the keys of a JWKS file that is re-read
//! when it changes, so keys rotate without a restart.
//!
//! - [`Verifier`]: checks signature (by `kid`), issuer, audience, expiry and
//!   not-before, and turns the claims into a [`Principal`]; a verified token is
//!   remembered until it expires or the key set changes.
//! - [`AuthLayer`]: the tower layer every service's gRPC server runs, answering
//!   `UNAUTHENTICATED` itself and handing the handlers the [`Principal`] as a
//!   request extension. The principal recorded in event headers comes from it,
//!   never from client metadata.
//! - [`policy`]: the one table of permissions, the roles that hold them and
//!   the RPCs that need them; the layer refuses a caller without the
//!   permission (`PERMISSION_DENIED` naming it) and any RPC the table lacks.
//! - [`scope`]: where a grant holds (a unit and its subtree, a department,
//!   the caller's own things); the layer hands the handler an [`Access`] and
//!   the handler asks it whether the grants reach what the request acts on.
//! - [`Signer`]: mints tokens — the development key `make run` creates under
//!   `var/` (`gridctl login`), and the tests' keys. A production deployment
//!   (any service not started with `GRIDWORK_DEVELOPMENT`) refuses the
//!   development key and issuer.
//!
//! - [`nats_users`]: the NATS users of a mesh whose server names them by
//!   nkey, each bound to its subject permissions (`deploy/nats/`).
//!
//! Must not depend on: any service crate, the event store or the runtime.

mod config;
mod keys;
mod layer;
pub mod nats_users;
pub mod policy;
mod principal;
pub mod scope;
mod signer;
mod verifier;

pub use config::AuthConfig;
pub use keys::{DEV_ISSUER, DEV_KID_PREFIX, KeyError};
pub use layer::{AuthLayer, OPEN_SERVICES};
pub use principal::{Grant, GrantError, Principal};
pub use scope::{Access, Denied, Level, ScopeKind, Target};
pub use signer::{DEV_JWKS_FILE, DEV_KEY_FILE, Signer, TokenSpec, dev_signer, write_jwks};
pub use verifier::{Unauthenticated, Verifier};

/// The default audience: every Gridwork service.
pub const AUDIENCE: &str = "gridwork";
