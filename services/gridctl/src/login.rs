//! `gridctl login`: a development token, signed with the key `make run` keeps
//! under `var/` (made here on first use), saved for the next commands.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use gridwork_auth::{Grant, TokenSpec};

/// Mint a token for `subject` holding `grants` for `hours`; save it under
/// `var` (owner-readable only) unless `print` asks for it on stdout instead.
pub fn run(var: &Path, subject: &str, grants: &[String], hours: u64, print: bool) -> anyhow::Result<()> {
    anyhow::ensure!(
        (1..=24).contains(&hours),
        "--hours must be 1 to 24: the services refuse tokens valid for longer (JWT_MAX_LIFETIME_HOURS, 24 by default)"
    );
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    if hours == 0 || hours > 24 * 7 {
        anyhow::bail!("--hours: a development token lasts 1 to 168 hours, not {hours}");
    }
    let grants = grants
        .iter()
        .map(|g| g.parse::<Grant>().and_then(|g| gridwork_auth::scope::check_grant(&g).map(|()| g)))
        .collect::<Result<Vec<_>, _>>()
        .context("--as")?;
    let spec = TokenSpec {
        subject: subject.to_string(),
        grants,
        valid_for: Duration::from_secs(hours * 3600),
        ..TokenSpec::new(subject, &[])?
    };
    let signer = gridwork_auth::dev_signer(var)?;
    let token = signer.mint(&spec)?;
    if print {
        println!("{token}");
        return Ok(());
    }
    let file = crate::caller::token_file(var);
    // A fresh file of our own (never an existing one, never through a
    // symlink), owner-only, renamed over the old token.
    let tmp = file.with_extension(format!("tmp.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(token.as_bytes())?;
    std::fs::rename(&tmp, &file).with_context(|| format!("saving {}", file.display()))?;
    let held: Vec<String> = spec.grants.iter().map(ToString::to_string).collect();
    if crate::json_output() {
        let line = serde_json::json!({ "subject": subject, "grants": held, "hours": hours, "tokenFile": file });
        crate::write_line(format_args!("{line}"));
    } else {
        crate::write_line(format_args!(
            "logged in as {subject} ({}) for {hours} h; token in {}",
            if held.is_empty() { "no grants".to_string() } else { held.join(", ") },
            file.display()
        ));
    }
    Ok(())
}
