//! The PostgreSQL backend; several powerdial instances may share one
//! database (R13).

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::{PgConnection, Transaction};

/// The PostgreSQL store: a connection pool.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    /// Opens `postgres://…` (URL options such as
    /// `?options=-c%20search_path%3Dschema` are honoured) and applies
    /// `migrations/postgres`.
    pub async fn open(url: &str) -> Result<PgStore, super::StoreError> {
        let opts = PgConnectOptions::from_str(url)?;
        let pool = PgPoolOptions::new()
            .max_connections(10)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(opts)
            .await?;
        sqlx::migrate!("migrations/postgres").run(&pool).await?;
        Ok(PgStore { pool })
    }

    /// The connection pool, for queries compiled elsewhere (Smart Views).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Starts a write transaction (READ COMMITTED, the server's default).
    pub async fn begin_write(&self) -> Result<Transaction<'static, sqlx::Postgres>, sqlx::Error> {
        self.pool.begin().await
    }
}

store_methods!(PgStore, PgConnection, PgRow);
