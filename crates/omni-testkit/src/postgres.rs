//! A schema of its own on the test PostgreSQL server, for daemons whose
//! threading store is PostgreSQL.

use std::{
    str::FromStr as _,
    time::{SystemTime, UNIX_EPOCH},
};

use sqlx::{AssertSqlSafe, Connection as _, PgConnection, postgres::PgConnectOptions};

/// A schema of its own on the test PostgreSQL server
/// (`$OMNID_TEST_POSTGRES_URL`, else `postgres://postgres@127.0.0.1:5432/test`),
/// dropped by [`Schema::drop`].
#[derive(Debug)]
pub struct Schema {
    options: PgConnectOptions,
    pub name: String,
}

impl Schema {
    /// Creates a schema named after this process and the time.
    ///
    /// # Panics
    /// If the server is unreachable.
    pub async fn create() -> Schema {
        let url = server_url();
        let options = PgConnectOptions::from_str(&url).expect("OMNID_TEST_POSTGRES_URL parses");
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let name = format!("omnid_threading_test_{}_{nanos}", std::process::id());
        let schema = Schema { options, name };
        schema
            .admin(&format!("CREATE SCHEMA {}", schema.name))
            .await;
        schema
    }

    /// Runs `sql` on its own connection (outside the schema).
    pub async fn admin(&self, sql: &str) {
        let mut conn = PgConnection::connect_with(&self.options).await.unwrap_or_else(|e| {
            panic!("PostgreSQL is not reachable ({e}); start one (scripts/lib.sh ensure_postgres) or set OMNID_TEST_POSTGRES_URL")
        });
        sqlx::raw_sql(AssertSqlSafe(sql.to_owned()))
            .execute(&mut conn)
            .await
            .expect("admin statement");
        conn.close().await.ok();
    }

    /// The server's URL with this schema as `search_path`.
    pub fn url(&self) -> String {
        let url = server_url();
        let separator = if url.contains('?') { '&' } else { '?' };
        format!("{url}{separator}options=-c%20search_path%3D{}", self.name)
    }

    /// The `[threading]` section of a daemon on this schema (the URL is
    /// written to a file in `dir`, as a secret would be).
    pub fn threading_config(&self, dir: &std::path::Path) -> String {
        let url_file = dir.join("postgres-url");
        std::fs::write(&url_file, self.url()).unwrap();
        format!(
            "[threading]\nstore = \"postgres\"\npostgres_url = {{ file = {:?} }}\nmax_connections = 4\n",
            url_file.display().to_string()
        )
    }

    /// Drops the schema.
    pub async fn drop(self) {
        self.admin(&format!("DROP SCHEMA {} CASCADE", self.name))
            .await;
    }
}

fn server_url() -> String {
    std::env::var("OMNID_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}
