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
    /// This instance's `application_name` (see [`PgStore::instance_tag`]).
    tag: String,
}

impl PgStore {
    /// Opens `postgres://…` (URL options such as
    /// `?options=-c%20search_path%3Dschema` are honoured) and applies
    /// `migrations/postgres`.
    pub async fn open(url: &str) -> Result<PgStore, super::StoreError> {
        // A tag per open store: the change notifications (migration 0049)
        // carry it, so an instance can tell its own changes from others'.
        let tag = format!("powerdial-{:016x}", rand::random::<u64>());
        // JIT off: the planner's cost for a Smart View over 1,000,000 leads
        // crosses the JIT threshold, and compiling the expressions took
        // longer than running them (SPEC §6, 500 ms per view).
        let opts = PgConnectOptions::from_str(url)?
            .application_name(&tag)
            .options([("jit", "off")]);
        let pool = PgPoolOptions::new()
            .max_connections(10)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(opts)
            .await?;
        sqlx::migrate!("migrations/postgres").run(&pool).await?;
        Ok(PgStore { pool, tag })
    }

    /// The `application_name` this store's connections carry; the
    /// `powerdial_leads` notifications of their changes end with it (R6:
    /// an instance skips its own, already signalled with the leads named).
    pub fn instance_tag(&self) -> &str {
        &self.tag
    }

    /// The connection pool, for queries compiled elsewhere (Smart Views).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The pool a single-statement write runs on (the one pool: PostgreSQL
    /// takes concurrent writers).
    pub fn write_pool(&self) -> &PgPool {
        &self.pool
    }

    /// Starts a write transaction (READ COMMITTED, the server's default).
    pub async fn begin_write(&self) -> Result<Transaction<'static, sqlx::Postgres>, sqlx::Error> {
        self.pool.begin().await
    }
}

impl PgStore {
    /// Whole leads by id in one statement (`store_methods!`'s
    /// `load_chunk` appends the `(…)` of ids): contacts with their phones,
    /// custom values and opportunities as JSON arrays, returned as text
    /// (`json`, not `jsonb`: it keeps the aggregates' order).
    pub(crate) const LEADS_BY_ID: &'static str = "SELECT l.id, l.name, l.status, l.created_ms, \
         l.updated_ms, l.do_not_call, \
         (SELECT json_agg(json_build_array(c.name, c.emails::json, \
            COALESCE((SELECT json_agg(p.number ORDER BY p.position, p.id) \
                      FROM phones p WHERE p.contact_id = c.id), '[]'::json)) \
            ORDER BY c.position, c.id) \
          FROM contacts c WHERE c.lead_id = l.id)::text AS contacts, \
         (SELECT json_agg(json_build_array(f.name, f.kind, v.value_text, v.value_num, v.value_ms)) \
          FROM lead_custom_values v JOIN custom_fields f ON f.id = v.field_id \
          WHERE v.lead_id = l.id)::text AS custom, \
         (SELECT json_agg(json_build_array(o.id, o.status_type, o.created_ms, o.value) \
            ORDER BY o.created_ms, o.id) \
          FROM opportunities o WHERE o.lead_id = l.id)::text AS opps \
         FROM leads l WHERE l.id IN";
}

store_methods!(PgStore, PgConnection, PgRow);

impl PgStore {
    /// Writes a batch of binding changes in one transaction, one statement
    /// per kind whatever the batch size: the rows travel as arrays and
    /// `UNNEST` turns them back into rows (see
    /// [`super::Store::save_registrations`]).
    pub(crate) async fn save_registrations(
        &self,
        batch: &super::RegistrationBatch,
    ) -> Result<(), super::StoreError> {
        use super::{Entity, StoreError};

        let mut tx = self.begin_write().await?;
        if !batch.removals.is_empty() {
            let (aors, contacts): (Vec<&str>, Vec<&str>) = batch
                .removals
                .iter()
                .map(|(a, c)| (a.as_str(), c.as_str()))
                .unzip();
            sqlx::query(
                "DELETE FROM registrations r \
                 USING UNNEST($1::text[], $2::text[]) AS d(aor, contact) \
                 WHERE r.aor = d.aor AND r.contact = d.contact",
            )
            .bind(aors)
            .bind(contacts)
            .execute(&mut *tx)
            .await?;
        }
        if !batch.upserts.is_empty() {
            let u = &batch.upserts;
            sqlx::query(
                "INSERT INTO registrations (aor, contact, expires_ms, call_id, cseq, q, transport, source) \
                 SELECT * FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::text[], $5::int8[], \
                 $6::float8[], $7::text[], $8::text[]) \
                 ON CONFLICT (aor, contact) DO UPDATE SET expires_ms = excluded.expires_ms, \
                 call_id = excluded.call_id, cseq = excluded.cseq, q = excluded.q, \
                 transport = excluded.transport, source = excluded.source",
            )
            .bind(u.iter().map(|r| r.aor.as_str()).collect::<Vec<_>>())
            .bind(u.iter().map(|r| r.contact.as_str()).collect::<Vec<_>>())
            .bind(u.iter().map(|r| r.expires_ms).collect::<Vec<_>>())
            .bind(u.iter().map(|r| r.call_id.as_str()).collect::<Vec<_>>())
            .bind(u.iter().map(|r| r.cseq).collect::<Vec<_>>())
            .bind(u.iter().map(|r| r.q).collect::<Vec<_>>())
            .bind(u.iter().map(|r| r.transport.as_str()).collect::<Vec<_>>())
            .bind(u.iter().map(|r| r.source.as_str()).collect::<Vec<_>>())
            .execute(&mut *tx)
            .await
            .map_err(|e| StoreError::from_sqlx(e, Entity::Registration, "batch"))?;
        }
        tx.commit().await?;
        Ok(())
    }
}
