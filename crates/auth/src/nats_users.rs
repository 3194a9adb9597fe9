//! NATS users for a mesh whose server names its users by nkey: one user per
//! service and partner bureau, each bound to its subject permissions in
//! `deploy/nats/permissions.conf`, and an operator user for tools.
//! `gridctl nats-users` writes them (`make run` does, under `var/`); the tests
//! run the mesh on them.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;

/// Every user and the permissions variable it is bound to.
pub const USERS: &[(&str, &str)] = &[
    ("grid-registry", "GRID_REGISTRY"),
    ("incident-intake", "INCIDENT_INTAKE"),
    ("dispatch", "DISPATCH"),
    ("sample-ledger", "SAMPLE_LEDGER"),
    ("police", "POLICE_BUREAU"),
    ("civil-affairs", "CIVIL_AFFAIRS_BUREAU"),
    ("operator", "TOOLS"),
];

/// What [`write_users`] wrote.
#[derive(Debug, Clone)]
pub struct NatsUsers {
    /// The directory: `<user>.nk` seeds (owner-only), `permissions.conf`, `users.conf`.
    pub dir: PathBuf,
}

impl NatsUsers {
    /// The server configuration to include (`nats-server -c` it, or `include` it).
    pub fn config(&self) -> PathBuf {
        self.dir.join("users.conf")
    }

    /// `user`'s seed file (for `NATS_NKEY_FILE`).
    pub fn seed_file(&self, user: &str) -> PathBuf {
        self.dir.join(format!("{user}.nk"))
    }

    /// `user`'s seed.
    pub fn seed(&self, user: &str) -> anyhow::Result<String> {
        let path = self.seed_file(user);
        Ok(std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?.trim().to_string())
    }
}

/// Under `dir`: an nkey seed per user of [`USERS`] (made once, kept after),
/// a copy of `permissions`, and `users.conf` binding each user's public key to
/// its permissions.
pub fn write_users(dir: &Path, permissions: &Path) -> anyhow::Result<NatsUsers> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let blocks = std::fs::read_to_string(permissions).with_context(|| format!("reading {}", permissions.display()))?;
    let mut users = String::new();
    for (user, variable) in USERS {
        if !blocks.contains(&format!("\n{variable} = {{")) {
            anyhow::bail!("{}: no permissions {variable} for the NATS user {user}", permissions.display());
        }
        let seed_file = dir.join(format!("{user}.nk"));
        let pair = match std::fs::read_to_string(&seed_file) {
            Ok(seed) => nkeys::KeyPair::from_seed(seed.trim())
                .map_err(|e| anyhow::anyhow!("{}: not a user nkey seed: {e}", seed_file.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let pair = nkeys::KeyPair::new_user();
                let seed = pair.seed().map_err(|e| anyhow::anyhow!("nkey seed: {e}"))?;
                write_private(&seed_file, seed.as_bytes())?;
                pair
            }
            Err(e) => return Err(e).with_context(|| format!("reading {}", seed_file.display())),
        };
        users.push_str(&format!("    {{ nkey: {}, permissions: ${variable} }}\n", pair.public_key()));
    }
    let copy = dir.join("permissions.conf");
    replace(&copy, blocks.as_bytes())?;
    let conf = format!(
        "# Written by `gridctl nats-users` from {}: each user's nkey bound to its permissions.\n\
         include \"permissions.conf\"\n\nauthorization {{\n  users = [\n{users}  ]\n}}\n",
        permissions.display()
    );
    replace(&dir.join("users.conf"), conf.as_bytes())?;
    Ok(NatsUsers { dir: dir.to_path_buf() })
}

/// Create `path` owner-only with `bytes`, whole (a temp file renamed in).
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

fn replace(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn seeds_are_made_once_and_every_user_is_bound_to_its_permissions() {
        let dir = tempfile::tempdir().expect("dir");
        let permissions = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/nats/permissions.conf");
        let users = super::write_users(dir.path(), &permissions).expect("users");
        let first = users.seed("dispatch").expect("seed");
        assert!(first.starts_with("SU"), "a user seed");
        let again = super::write_users(dir.path(), &permissions).expect("again");
        assert_eq!(again.seed("dispatch").expect("seed"), first, "kept across runs");
        let conf = std::fs::read_to_string(users.config()).expect("conf");
        for (_, variable) in super::USERS {
            assert!(conf.contains(&format!("permissions: ${variable} }}")), "{variable} bound");
        }
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(users.seed_file("dispatch")).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "seeds are owner-only");
    }
}
