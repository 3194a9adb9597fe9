//! Fresh databases for one test.

use anyhow::Context as _;

/// The environment variable naming a PostgreSQL server for tests, e.g.
/// `postgres://postgres@127.0.0.1:5432/postgres`. `.ci/run` sets it.
pub const POSTGRES_ENV: &str = "GRIDWORK_TEST_POSTGRES_URL";

/// A test database. SQLite files live in a temp dir removed on drop; PostgreSQL
/// databases are dropped on [`TestDb::cleanup`].
pub struct TestDb {
    /// sqlx URL of the fresh database.
    pub url: String,
    /// Admin URL and name, for PostgreSQL clean-up.
    pg: Option<(String, String)>,
    _dir: Option<tempfile::TempDir>,
}

impl TestDb {
    /// A fresh SQLite file.
    pub fn sqlite() -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("gridwork-sqlite-").tempdir()?;
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("read.db").display());
        Ok(Self { url, pg: None, _dir: Some(dir) })
    }

    /// A fresh PostgreSQL database, or `None` (with a line saying so on stderr) when
    /// `GRIDWORK_TEST_POSTGRES_URL` is not set.
    pub async fn postgres(test: &str) -> anyhow::Result<Option<Self>> {
        let Ok(admin) = std::env::var(POSTGRES_ENV) else {
            eprintln!("SKIPPED (PostgreSQL): {test}: set {POSTGRES_ENV} to run it");
            return Ok(None);
        };
        use sqlx::Connection as _;
        let name = format!("gridwork_test_{}", uuid::Uuid::now_v7().simple());
        let mut conn = sqlx::PgConnection::connect(&admin)
            .await
            .with_context(|| format!("connecting to {POSTGRES_ENV}={admin}"))?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&mut conn).await?;
        let url = replace_db(&admin, &name);
        Ok(Some(Self { url, pg: Some((admin, name)), _dir: None }))
    }

    /// Drop a PostgreSQL database (SQLite files go with the temp dir).
    pub async fn cleanup(self) {
        if let Some((admin, name)) = &self.pg {
            use sqlx::Connection as _;
            if let Ok(mut conn) = sqlx::PgConnection::connect(admin).await {
                let _ = sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")))
                    .execute(&mut conn)
                    .await;
            }
        }
    }
}

fn replace_db(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let base = match base.rfind('/') {
        Some(i) if i > "postgres://".len() => &base[..i],
        _ => base,
    };
    match query {
        Some(q) => format!("{base}/{name}?{q}"),
        None => format!("{base}/{name}"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_database_name_is_replaced_in_a_postgres_url() {
        assert_eq!(
            super::replace_db("postgres://postgres@127.0.0.1:5432/postgres", "t1"),
            "postgres://postgres@127.0.0.1:5432/t1"
        );
        assert_eq!(
            super::replace_db("postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable", "t1"),
            "postgres://postgres@127.0.0.1:5432/t1?sslmode=disable"
        );
    }
}
