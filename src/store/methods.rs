//! The SQL shared by both backends, generated for each by `store_methods!`:
//! `$N` placeholders, `RETURNING`, `ON CONFLICT … DO UPDATE` and row values
//! mean the same in SQLite ≥ 3.35 and PostgreSQL, so one text serves both.
//! Each backend type provides `pool()` and `begin_write()`.

/// Largest number of ids put in one `IN (…)` list: well under SQLite's
/// 32,766 bound parameters and PostgreSQL's 65,535.
pub(crate) const IN_CHUNK: usize = 500;

/// `$1, $2, …, $n`.
pub(crate) fn placeholders(n: usize) -> String {
    let mut s = String::with_capacity(n * 5);
    push_numbered(&mut s, 1, n);
    s
}

/// `($1, …, $width), ($width+1, …), …` for `rows` rows of a multi-row
/// `VALUES` list.
pub(crate) fn row_placeholders(rows: usize, width: usize) -> String {
    let mut s = String::with_capacity(rows * (width * 5 + 4));
    for r in 0..rows {
        if r > 0 {
            s.push_str(", ");
        }
        s.push('(');
        push_numbered(&mut s, r * width + 1, width);
        s.push(')');
    }
    s
}

/// [`row_placeholders`] with each parameter cast to its column's type
/// (`(CAST($1 AS BIGINT), …), …`): a `VALUES` list alone leaves
/// PostgreSQL's parameters untyped (text), where SQLite reads the casts as
/// affinities.
pub(crate) fn typed_row_placeholders(rows: usize, casts: &[&str]) -> String {
    let width = casts.len();
    let mut s = String::with_capacity(rows * (width * 24 + 4));
    for r in 0..rows {
        if r > 0 {
            s.push_str(", ");
        }
        s.push('(');
        for (i, cast) in casts.iter().enumerate() {
            if i > 0 {
                s.push_str(", ");
            }
            s.push_str("CAST($");
            s.push_str(&(r * width + i + 1).to_string());
            s.push_str(" AS ");
            s.push_str(cast);
            s.push(')');
        }
        s.push(')');
    }
    s
}

/// Appends `$first, …` (`n` numbered placeholders).
fn push_numbered(s: &mut String, first: usize, n: usize) {
    for i in first..first + n {
        if i > first {
            s.push_str(", ");
        }
        s.push('$');
        s.push_str(&i.to_string());
    }
}

/// A lead's contacts, custom values and opportunities as the backends'
/// `LEADS_BY_ID` return them: three JSON arrays of arrays, in the order
/// the lead shows them (contacts and phones by position, opportunities by
/// creation).
pub(crate) struct LeadParts {
    pub(crate) contacts: Vec<crate::leads::model::Contact>,
    pub(crate) custom: std::collections::BTreeMap<String, crate::leads::model::CustomValue>,
    pub(crate) opportunities: Vec<crate::leads::model::Opportunity>,
}

/// `[name, emails (JSON array or null), [phone, …]]`.
type ContactJson = (String, Option<Vec<String>>, Vec<String>);
/// `[field name, field kind, value_text, value_num, value_ms]`.
type CustomJson = (String, String, Option<String>, Option<f64>, Option<i64>);
/// `[id, status_type, created_ms, value]`.
type OpportunityJson = (i64, String, i64, Option<f64>);

impl LeadParts {
    /// Decodes the three arrays; a value the schema does not allow is
    /// [`super::StoreError::Corrupt`].
    pub(crate) fn decode(
        contacts: Option<String>,
        custom: Option<String>,
        opps: Option<String>,
    ) -> Result<LeadParts, super::StoreError> {
        use super::StoreError::Corrupt;
        use crate::leads::model::{
            Contact, CustomFieldKind, CustomValue, Opportunity, OpportunityStatus,
        };
        fn parse<T: serde::de::DeserializeOwned>(
            json: Option<String>,
            what: &'static str,
        ) -> Result<Vec<T>, super::StoreError> {
            match json {
                Some(j) => serde_json::from_str(&j).map_err(|_| super::StoreError::Corrupt(what)),
                None => Ok(Vec::new()),
            }
        }
        let contacts = parse::<ContactJson>(contacts, "contacts")?
            .into_iter()
            .map(|(name, emails, phones)| {
                let phones = phones
                    .iter()
                    .map(|n| {
                        crate::leads::phone::PhoneE164::from_e164(n)
                            .map_err(|_| Corrupt("phones.number"))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(Contact {
                    name,
                    phones,
                    emails: emails.unwrap_or_default(),
                })
            })
            .collect::<Result<Vec<_>, super::StoreError>>()?;
        let mut values = std::collections::BTreeMap::new();
        for (name, kind, text, num, ms) in parse::<CustomJson>(custom, "lead_custom_values")? {
            let kind = CustomFieldKind::parse(&kind).ok_or(Corrupt("custom_fields.kind"))?;
            if let Some(v) = CustomValue::from_columns(kind, text, num, ms) {
                values.insert(name, v);
            }
        }
        let opportunities = parse::<OpportunityJson>(opps, "opportunities")?
            .into_iter()
            .map(|(id, st, created_ms, value)| {
                Ok(Opportunity {
                    id,
                    status_type: OpportunityStatus::parse(&st)
                        .ok_or(Corrupt("opportunities.status_type"))?,
                    created: crate::leads::model::ms_to_time(created_ms),
                    value,
                })
            })
            .collect::<Result<Vec<_>, super::StoreError>>()?;
        Ok(LeadParts {
            contacts,
            custom: values,
            opportunities,
        })
    }
}

/// Stores a call's end: each column only when the end names it, so an
/// earlier answer time or trunk stays (SPEC §4, the call record). `$6` is
/// the call's id; [`bind_call_end!`] binds the rest in order.
pub(crate) const FINISH_CALL_UPDATE: &str =
    "UPDATE calls SET answered_ms = COALESCE($1, answered_ms), \
     ended_ms = COALESCE($2, ended_ms), outcome = COALESCE($3, outcome), \
     sip_status = COALESCE($4, sip_status), ring_ms = COALESCE($5, ring_ms), \
     trunk = COALESCE($7, trunk), caller_id = COALESCE($8, caller_id), \
     amd = COALESCE($9, amd), amd_ms = COALESCE($10, amd_ms), \
     recording = COALESCE($11, recording) \
     WHERE id = $6";

/// Records one [`finish_calls_sql`] statement updates at most (11
/// parameters each: well under both backends' bounds).
pub(crate) const FINISH_CALLS_ROWS: usize = 256;

/// [`FINISH_CALL_UPDATE`] for `rows` records in one statement: the values
/// as a `VALUES` list joined by id (`UPDATE … FROM`, SQLite ≥ 3.33 and
/// PostgreSQL; typed by [`typed_row_placeholders`]). Each row binds the
/// id, then the `CallEnd`'s columns in their declared order.
pub(crate) fn finish_calls_sql(rows: usize) -> String {
    const CASTS: [&str; 11] = [
        "BIGINT", "BIGINT", "BIGINT", "TEXT", "INTEGER", "BIGINT", "TEXT", "TEXT", "TEXT",
        "BIGINT", "TEXT",
    ];
    let mut s = String::with_capacity(400 + rows * 180);
    s.push_str(
        "WITH v (vid, v_answered, v_ended, v_outcome, v_status, v_ring, v_trunk, \
         v_caller, v_amd, v_amd_ms, v_recording) AS (VALUES ",
    );
    s.push_str(&typed_row_placeholders(rows, &CASTS));
    s.push_str(
        ") UPDATE calls SET answered_ms = COALESCE(v_answered, answered_ms), \
         ended_ms = COALESCE(v_ended, ended_ms), outcome = COALESCE(v_outcome, outcome), \
         sip_status = COALESCE(v_status, sip_status), ring_ms = COALESCE(v_ring, ring_ms), \
         trunk = COALESCE(v_trunk, trunk), caller_id = COALESCE(v_caller, caller_id), \
         amd = COALESCE(v_amd, amd), amd_ms = COALESCE(v_amd_ms, amd_ms), \
         recording = COALESCE(v_recording, recording) \
         FROM v WHERE calls.id = v.vid",
    );
    s
}

/// The dial's record insert with the do-not-call checks folded in (SPEC
/// §4: the list is asked at every dial, in the shared database, so an
/// entry added on any instance holds on all): one statement instead of a
/// read, a second read for the lead's flag and the insert (SPEC §6 call
/// setup rate). Binds `$1`–`$12` as `insert_call` does (`$11` the trunk,
/// `$12` the R13 claim), `$13` whether to read the lead's flag, then the
/// `candidates` pattern texts of [`crate::leads::dnc::DncPattern::candidates`]
/// for `$4`, the number. The trunk is stored only when nothing forbids the
/// call; `dnc_hit` returns the covering pattern (the number itself before
/// the longest prefix; a prefix with a trailing `*`), `lead_dnc` the lead's
/// flag when asked — both read again only for a record stored without a
/// trunk (a call that goes out costs one lookup of the list). The statement
/// is atomic, so the answers come from the list and the lead as the insert
/// saw them.
pub(crate) fn dial_insert_sql(columns: &str, candidates: usize) -> String {
    let covering = covering_sql(4, 14, candidates);
    format!(
        "INSERT INTO calls (session_id, lead_id, agent, number, started_ms, answered_ms, \
         ended_ms, outcome, sip_status, ring_ms, trunk, claim_id) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, \
         CASE WHEN EXISTS (SELECT 1 {covering}) \
         OR ($13 AND EXISTS (SELECT 1 FROM leads WHERE id = $2 AND do_not_call <> 0)) \
         THEN NULL ELSE $11 END, $12) \
         RETURNING {columns}, \
         CASE WHEN trunk IS NULL THEN \
         (SELECT CASE WHEN prefix THEN pattern || '*' ELSE pattern END {covering} \
          ORDER BY prefix, length(pattern) DESC LIMIT 1) END AS dnc_hit, \
         CASE WHEN trunk IS NULL THEN \
         (SELECT do_not_call FROM leads WHERE id = $2 AND $13) END AS lead_dnc"
    )
}

/// The do-not-call pattern covering the number `$1` (`dnc_hit`, as in
/// [`dial_insert_sql`]) and lead `$2`'s mark (`lead_dnc`, NULL for no
/// lead) in one statement; `$3`… are the number's `candidates` pattern
/// texts. A manual call asks it before it takes any resource (SPEC §4).
pub(crate) fn dnc_check_sql(candidates: usize) -> String {
    let covering = covering_sql(1, 3, candidates);
    format!(
        "SELECT (SELECT CASE WHEN prefix THEN pattern || '*' ELSE pattern END {covering} \
         ORDER BY prefix, length(pattern) DESC LIMIT 1) AS dnc_hit, \
         (SELECT do_not_call FROM leads WHERE id = $2) AS lead_dnc"
    )
}

/// `FROM dnc WHERE …`: the rows covering the number `$number` among the
/// `candidates` pattern texts bound from `$first` on (one primary-key
/// lookup each; a row whose text is a shorter prefix of the number but
/// not marked a prefix does not cover it).
fn covering_sql(number: usize, first: usize, candidates: usize) -> String {
    if candidates == 0 {
        // No pattern text can cover an empty number.
        return "FROM dnc WHERE 1 = 0".to_string();
    }
    let mut s = String::with_capacity(60 + candidates * 6);
    s.push_str("FROM dnc WHERE pattern IN (");
    push_numbered(&mut s, first, candidates);
    s.push_str(") AND (prefix OR pattern = $");
    s.push_str(&number.to_string());
    s.push(')');
    s
}

/// The pattern of [`dial_insert_sql`]'s `dnc_hit`: a trailing `*` marks a
/// prefix (pattern texts are E.164 digits, never `*`).
pub(crate) fn dnc_of_hit(hit: &str) -> crate::leads::dnc::DncPattern {
    match hit.strip_suffix('*') {
        Some(digits) => crate::leads::dnc::DncPattern::from_stored(digits.to_string(), true),
        None => crate::leads::dnc::DncPattern::from_stored(hit.to_string(), false),
    }
}

/// Binds a call's id and its `CallEnd` to [`FINISH_CALL_UPDATE`]'s
/// placeholders, in their order.
macro_rules! bind_call_end {
    ($query:expr, $id:expr, $end:expr) => {
        $query
            .bind($end.answered_ms)
            .bind($end.ended_ms)
            .bind($end.outcome.map(|o| o.as_str()))
            .bind($end.sip_status.map(i32::from))
            .bind($end.ring_ms)
            .bind($id)
            .bind($end.trunk.as_deref())
            .bind($end.caller_id.as_deref())
            .bind($end.amd.map(|v| v.as_str()))
            .bind($end.amd_ms)
            .bind($end.recording.as_deref())
    };
}

macro_rules! store_methods {
    ($store:ty, $conn:ty, $row:ty) => {
        use std::collections::HashMap;

        use sqlx::Row as _;

        use crate::leads::model::{
            ms_to_time, CallEnd, CallOutcome, CallRecord, Contact, CustomField,
            CustomFieldKind, CustomValue, Lead, NewCall, NewCustomField, NewSmartView,
            Opportunity, Registration, SmartView,
            ValidOpportunity, ValidPatch,
        };
        use crate::store::methods::{placeholders, IN_CHUNK};
        use crate::store::{CallCursor, CallFilter, Entity, StoreError};

        fn field_from_row(row: &$row) -> Result<CustomField, StoreError> {
            let kind: String = row.try_get("kind")?;
            let choices: Option<String> = row.try_get("choices")?;
            Ok(CustomField {
                id: row.try_get("id")?,
                name: row.try_get("name")?,
                kind: CustomFieldKind::parse(&kind).ok_or(StoreError::Corrupt("custom_fields.kind"))?,
                choices: match choices {
                    Some(c) => serde_json::from_str(&c)
                        .map_err(|_| StoreError::Corrupt("custom_fields.choices"))?,
                    None => Vec::new(),
                },
            })
        }

        fn call_from_row(row: &$row) -> Result<CallRecord, StoreError> {
            let outcome: Option<String> = row.try_get("outcome")?;
            let sip_status: Option<i32> = row.try_get("sip_status")?;
            Ok(CallRecord {
                id: row.try_get("id")?,
                session_id: row.try_get("session_id")?,
                lead_id: row.try_get("lead_id")?,
                agent: row.try_get("agent")?,
                number: row.try_get("number")?,
                started_at: ms_to_time(row.try_get("started_ms")?),
                answered_at: row.try_get::<Option<i64>, _>("answered_ms")?.map(ms_to_time),
                ended_at: row.try_get::<Option<i64>, _>("ended_ms")?.map(ms_to_time),
                outcome: match outcome {
                    Some(o) => Some(CallOutcome::parse(&o).ok_or(StoreError::Corrupt("calls.outcome"))?),
                    None => None,
                },
                sip_status: sip_status.and_then(|s| u16::try_from(s).ok()),
                ring_ms: row.try_get("ring_ms")?,
                notes: row.try_get("notes")?,
                trunk: row.try_get("trunk")?,
                caller_id: row.try_get("caller_id")?,
                amd: row
                    .try_get::<Option<String>, _>("amd")?
                    .and_then(|v| crate::media::amd::Verdict::parse(&v)),
                amd_ms: row.try_get("amd_ms")?,
                recorded: row.try_get::<Option<String>, _>("recording")?.is_some(),
            })
        }

        fn view_from_row(row: &$row) -> Result<SmartView, StoreError> {
            Ok(SmartView {
                id: row.try_get("id")?,
                name: row.try_get("name")?,
                query: row.try_get("query")?,
                created: ms_to_time(row.try_get("created_ms")?),
            })
        }

        fn registration_from_row(row: &$row) -> Result<Registration, StoreError> {
            Ok(Registration {
                aor: row.try_get("aor")?,
                contact: row.try_get("contact")?,
                expires_ms: row.try_get("expires_ms")?,
                call_id: row.try_get("call_id")?,
                cseq: row.try_get("cseq")?,
                q: row.try_get("q")?,
                transport: row.try_get("transport")?,
                source: row.try_get("source")?,
            })
        }

        const CALL_COLUMNS: &str = "id, session_id, lead_id, agent, number, started_ms, \
            answered_ms, ended_ms, outcome, sip_status, ring_ms, notes, trunk, caller_id, amd, amd_ms, recording";

        async fn insert_contacts(
            conn: &mut $conn,
            lead_id: i64,
            contacts: &[Contact],
        ) -> Result<(), sqlx::Error> {
            for (pos, c) in contacts.iter().enumerate() {
                // Emails as a JSON array; NULL when none (most contacts).
                let emails = (!c.emails.is_empty())
                    .then(|| serde_json::to_string(&c.emails).unwrap_or_default());
                let contact_id: i64 = sqlx::query_scalar(
                    "INSERT INTO contacts (lead_id, position, name, emails) VALUES ($1, $2, $3, $4) \
                     RETURNING id",
                )
                .bind(lead_id)
                .bind(pos as i32)
                .bind(&c.name)
                .bind(emails)
                .fetch_one(&mut *conn)
                .await?;
                for (ppos, p) in c.phones.iter().enumerate() {
                    sqlx::query("INSERT INTO phones (contact_id, position, number) VALUES ($1, $2, $3)")
                        .bind(contact_id)
                        .bind(ppos as i32)
                        .bind(p.as_str())
                        .execute(&mut *conn)
                        .await?;
                }
            }
            Ok(())
        }

        async fn upsert_custom(
            conn: &mut $conn,
            lead_id: i64,
            field_id: i64,
            value: &CustomValue,
        ) -> Result<(), sqlx::Error> {
            let (text, num, ms) = value.columns();
            sqlx::query(
                "INSERT INTO lead_custom_values (lead_id, field_id, value_text, value_num, value_ms) \
                 VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (lead_id, field_id) DO UPDATE SET value_text = excluded.value_text, \
                 value_num = excluded.value_num, value_ms = excluded.value_ms",
            )
            .bind(lead_id)
            .bind(field_id)
            .bind(text)
            .bind(num)
            .bind(ms)
            .execute(&mut *conn)
            .await?;
            Ok(())
        }

        async fn insert_opportunity(
            conn: &mut $conn,
            lead_id: i64,
            o: &ValidOpportunity,
        ) -> Result<i64, sqlx::Error> {
            sqlx::query_scalar(
                "INSERT INTO opportunities (lead_id, status_type, created_ms, value) \
                 VALUES ($1, $2, $3, $4) RETURNING id",
            )
            .bind(lead_id)
            .bind(o.status_type.as_str())
            .bind(o.created_ms)
            .bind(o.value)
            .fetch_one(&mut *conn)
            .await
        }

        /// Loads whole leads for one chunk of ids (≤ IN_CHUNK) in one
        /// statement: the lead's row with its contacts (and their phones),
        /// custom values and opportunities as JSON arrays built by the
        /// database ([`LeadParts`], the backend's `LEADS_BY_ID`). Every
        /// statement is a round trip to a connection's thread (SQLite) or
        /// the server (PostgreSQL); a dial reads its lead (R2, calling
        /// hours), so four statements per lead were four per call (SPEC §6
        /// call setup).
        async fn load_chunk(
            conn: &mut $conn,
            ids: &[i64],
            out: &mut HashMap<i64, Lead>,
        ) -> Result<(), StoreError> {
            let sql = format!("{} ({})", <$store>::LEADS_BY_ID, placeholders(ids.len()));
            let mut q = sqlx::query(&sql);
            for id in ids {
                q = q.bind(*id);
            }
            for row in q.fetch_all(&mut *conn).await? {
                let id: i64 = row.try_get("id")?;
                let parts = crate::store::methods::LeadParts::decode(
                    row.try_get("contacts")?,
                    row.try_get("custom")?,
                    row.try_get("opps")?,
                )?;
                out.insert(
                    id,
                    Lead {
                        id,
                        name: row.try_get("name")?,
                        status: row.try_get("status")?,
                        created: ms_to_time(row.try_get("created_ms")?),
                        updated: ms_to_time(row.try_get("updated_ms")?),
                        contacts: parts.contacts,
                        custom: parts.custom,
                        opportunities: parts.opportunities,
                        do_not_call: row.try_get::<i64, _>("do_not_call")? != 0,
                    },
                );
            }
            Ok(())
        }

        impl $store {
            pub(crate) async fn list_custom_fields(&self) -> Result<Vec<CustomField>, StoreError> {
                let rows = sqlx::query("SELECT id, name, kind, choices FROM custom_fields ORDER BY name, id")
                    .fetch_all(self.pool())
                    .await?;
                rows.iter().map(field_from_row).collect()
            }

            pub(crate) async fn define_custom_field(
                &self,
                f: &NewCustomField,
            ) -> Result<CustomField, StoreError> {
                let choices = match f.kind {
                    CustomFieldKind::Choices => Some(
                        serde_json::to_string(
                            &f.choices.iter().map(|c| c.trim()).collect::<Vec<_>>(),
                        )
                        .map_err(|_| StoreError::Corrupt("custom_fields.choices"))?,
                    ),
                    _ => None,
                };
                let row = sqlx::query(
                    "INSERT INTO custom_fields (name, kind, choices) VALUES ($1, $2, $3) \
                     RETURNING id, name, kind, choices",
                )
                .bind(f.name.trim())
                .bind(f.kind.as_str())
                .bind(choices)
                .fetch_one(self.pool())
                .await
                .map_err(|e| StoreError::from_sqlx(e, Entity::CustomField, f.name.trim()))?;
                field_from_row(&row)
            }

            pub(crate) async fn get_leads(&self, ids: &[i64]) -> Result<Vec<Lead>, StoreError> {
                let mut conn = self.pool().acquire().await?;
                self.get_leads_on(&mut conn, ids).await
            }

            /// [`Self::get_leads`] on a connection the caller holds (the
            /// session writer reads its round's leads on its writer
            /// connection: no second connection taken and returned).
            pub(crate) async fn get_leads_on(
                &self,
                conn: &mut $conn,
                ids: &[i64],
            ) -> Result<Vec<Lead>, StoreError> {
                let mut found = HashMap::with_capacity(ids.len());
                for chunk in ids.chunks(IN_CHUNK) {
                    load_chunk(conn, chunk, &mut found).await?;
                }
                Ok(ids.iter().filter_map(|id| found.remove(id)).collect())
            }

            pub(crate) async fn update_lead(
                &self,
                id: i64,
                p: &ValidPatch,
                now_ms: i64,
            ) -> Result<(), StoreError> {
                let map = |e| StoreError::from_sqlx(e, Entity::Lead, id);
                let mut tx = self.begin_write().await?;
                let done = sqlx::query(
                    "UPDATE leads SET name = COALESCE($1, name), status = COALESCE($2, status), \
                     created_ms = COALESCE($3, created_ms), updated_ms = $4, \
                     do_not_call = COALESCE($6, do_not_call) WHERE id = $5",
                )
                .bind(p.name.as_deref())
                .bind(p.status.as_deref())
                .bind(p.created_ms)
                .bind(now_ms)
                .bind(id)
                .bind(p.do_not_call.map(i64::from))
                .execute(&mut *tx)
                .await
                .map_err(map)?;
                if done.rows_affected() == 0 {
                    return Err(StoreError::NotFound { entity: Entity::Lead, id: id.to_string() });
                }
                if let Some(contacts) = &p.contacts {
                    sqlx::query("DELETE FROM contacts WHERE lead_id = $1")
                        .bind(id)
                        .execute(&mut *tx)
                        .await
                        .map_err(map)?;
                    insert_contacts(&mut tx, id, contacts).await.map_err(map)?;
                }
                for (field_id, value) in &p.custom {
                    match value {
                        Some(v) => upsert_custom(&mut tx, id, *field_id, v).await.map_err(map)?,
                        None => {
                            sqlx::query("DELETE FROM lead_custom_values WHERE lead_id = $1 AND field_id = $2")
                                .bind(id)
                                .bind(*field_id)
                                .execute(&mut *tx)
                                .await
                                .map_err(map)?;
                        }
                    }
                }
                if let Some(opps) = &p.opportunities {
                    sqlx::query("DELETE FROM opportunities WHERE lead_id = $1")
                        .bind(id)
                        .execute(&mut *tx)
                        .await
                        .map_err(map)?;
                    for o in opps {
                        insert_opportunity(&mut tx, id, o).await.map_err(map)?;
                    }
                }
                tx.commit().await?;
                Ok(())
            }

            pub(crate) async fn delete_lead(&self, id: i64) -> Result<(), StoreError> {
                let done = sqlx::query("DELETE FROM leads WHERE id = $1")
                    .bind(id)
                    .execute(self.pool())
                    .await?;
                if done.rows_affected() == 0 {
                    return Err(StoreError::NotFound { entity: Entity::Lead, id: id.to_string() });
                }
                Ok(())
            }

            pub(crate) async fn list_lead_ids(
                &self,
                after_id: Option<i64>,
                limit: u32,
            ) -> Result<Vec<i64>, StoreError> {
                Ok(sqlx::query_scalar("SELECT id FROM leads WHERE id > $1 ORDER BY id LIMIT $2")
                    .bind(after_id.unwrap_or(i64::MIN))
                    .bind(i64::from(limit))
                    .fetch_all(self.pool())
                    .await?)
            }

            pub(crate) async fn count_leads(&self) -> Result<i64, StoreError> {
                Ok(sqlx::query_scalar("SELECT COUNT(*) FROM leads")
                    .fetch_one(self.pool())
                    .await?)
            }

            pub(crate) async fn add_opportunity(
                &self,
                lead_id: i64,
                o: &ValidOpportunity,
                now_ms: i64,
            ) -> Result<Opportunity, StoreError> {
                let mut tx = self.begin_write().await?;
                let id = insert_opportunity(&mut tx, lead_id, o)
                    .await
                    .map_err(|e| match StoreError::from_sqlx(e, Entity::Lead, lead_id) {
                        // The only foreign key here is the lead.
                        StoreError::Invalid(_) => StoreError::NotFound { entity: Entity::Lead, id: lead_id.to_string() },
                        other => other,
                    })?;
                sqlx::query("UPDATE leads SET updated_ms = $1 WHERE id = $2")
                    .bind(now_ms)
                    .bind(lead_id)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(Opportunity {
                    id,
                    status_type: o.status_type,
                    created: ms_to_time(o.created_ms),
                    value: o.value,
                })
            }

            pub(crate) async fn insert_call(
                &self,
                c: &NewCall,
                claim: Option<i64>,
            ) -> Result<CallRecord, StoreError> {
                // One statement, committed on its own: the `calls_inserted`
                // trigger (migration 0070) moves `leads.last_call_ms` and
                // links the R13 claim to this call in the same statement.
                let sql = format!(
                    "INSERT INTO calls (session_id, lead_id, agent, number, started_ms, answered_ms, \
                     ended_ms, outcome, sip_status, ring_ms, trunk, claim_id) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING {CALL_COLUMNS}"
                );
                let row = sqlx::query(&sql)
                    .bind(c.session_id)
                    .bind(c.lead_id)
                    .bind(c.agent.as_deref())
                    .bind(&c.number)
                    .bind(c.started_ms)
                    .bind(c.answered_ms)
                    .bind(c.ended_ms)
                    .bind(c.outcome.map(|o| o.as_str()))
                    .bind(c.sip_status.map(i32::from))
                    .bind(c.ring_ms)
                    .bind(c.trunk.as_deref())
                    .bind(claim)
                    .fetch_one(self.write_pool())
                    .await
                    .map_err(|e| match StoreError::from_sqlx(e, Entity::Call, "") {
                        StoreError::Invalid(_) if c.lead_id.is_some() => StoreError::NotFound {
                            entity: Entity::Lead,
                            id: c.lead_id.unwrap_or_default().to_string(),
                        },
                        other => other,
                    })?;
                call_from_row(&row)
            }

            /// [`Self::insert_call`] for a dial, with the do-not-call
            /// checks of SPEC §4 in the same statement (see
            /// [`crate::store::methods::dial_insert_sql`]): the record is
            /// stored without its trunk when a pattern covers the number or
            /// (`ask_lead`) the lead is marked do not call; which of them
            /// held comes back with it.
            pub(crate) async fn insert_dial(
                &self,
                c: &NewCall,
                claim: Option<i64>,
                ask_lead: bool,
            ) -> Result<crate::store::DialInsert, StoreError> {
                let candidates = crate::leads::dnc::DncPattern::candidates(&c.number);
                let sql = crate::store::methods::dial_insert_sql(CALL_COLUMNS, candidates.len());
                let mut q = sqlx::query(&sql)
                    .bind(c.session_id)
                    .bind(c.lead_id)
                    .bind(c.agent.as_deref())
                    .bind(&c.number)
                    .bind(c.started_ms)
                    .bind(c.answered_ms)
                    .bind(c.ended_ms)
                    .bind(c.outcome.map(|o| o.as_str()))
                    .bind(c.sip_status.map(i32::from))
                    .bind(c.ring_ms)
                    .bind(c.trunk.as_deref())
                    .bind(claim)
                    .bind(ask_lead);
                for cand in candidates {
                    q = q.bind(cand);
                }
                let row = q
                    .fetch_one(self.write_pool())
                    .await
                    .map_err(|e| match StoreError::from_sqlx(e, Entity::Call, "") {
                        StoreError::Invalid(_) if c.lead_id.is_some() => StoreError::NotFound {
                            entity: Entity::Lead,
                            id: c.lead_id.unwrap_or_default().to_string(),
                        },
                        other => other,
                    })?;
                let dnc = row
                    .try_get::<Option<String>, _>("dnc_hit")?
                    .map(|hit| crate::store::methods::dnc_of_hit(&hit));
                let lead_do_not_call = row
                    .try_get::<Option<i64>, _>("lead_dnc")?
                    .is_some_and(|f| f != 0);
                Ok(crate::store::DialInsert {
                    record: call_from_row(&row)?,
                    dnc,
                    lead_do_not_call,
                })
            }

            /// The do-not-call pattern covering `e164` and whether lead
            /// `lead_id` is marked do not call, in one statement
            /// ([`crate::store::methods::dnc_check_sql`]).
            pub(crate) async fn dnc_check(
                &self,
                e164: &str,
                lead_id: Option<i64>,
            ) -> Result<(Option<crate::leads::dnc::DncPattern>, bool), StoreError> {
                let candidates = crate::leads::dnc::DncPattern::candidates(e164);
                let sql = crate::store::methods::dnc_check_sql(candidates.len());
                let mut q = sqlx::query(&sql).bind(e164).bind(lead_id);
                for cand in candidates {
                    q = q.bind(cand);
                }
                let row = q.fetch_one(self.pool()).await?;
                let dnc = row
                    .try_get::<Option<String>, _>("dnc_hit")?
                    .map(|hit| crate::store::methods::dnc_of_hit(&hit));
                let lead = row
                    .try_get::<Option<i64>, _>("lead_dnc")?
                    .is_some_and(|f| f != 0);
                Ok((dnc, lead))
            }

            pub(crate) async fn finish_call(
                &self,
                id: i64,
                e: &CallEnd,
            ) -> Result<CallRecord, StoreError> {
                let sql = format!(
                    "{} RETURNING {CALL_COLUMNS}",
                    crate::store::methods::FINISH_CALL_UPDATE
                );
                let row = bind_call_end!(sqlx::query(&sql), id, e)
                    .fetch_one(self.pool())
                    .await
                    .map_err(|err| StoreError::from_sqlx(err, Entity::Call, id))?;
                call_from_row(&row)
            }

            /// [`Self::finish_call`] for several records: one multi-row
            /// statement per [`FINISH_CALLS_ROWS`] (atomic on its own; a
            /// transaction only around several), so a batch costs one round
            /// trip instead of three or more (SPEC §6 call setup). A
            /// missing record fails the batch ([`StoreError::NotFound`];
            /// the others' updates may be stored, and the caller's retry
            /// record by record repeats them harmlessly: each is a
            /// `COALESCE` of the same values).
            pub(crate) async fn finish_calls(&self, ends: &[(i64, CallEnd)]) -> Result<(), StoreError> {
                use crate::store::methods::{finish_calls_sql, FINISH_CALLS_ROWS};
                async fn chunk<'c, E>(conn: E, chunk: &[(i64, CallEnd)]) -> Result<(), StoreError>
                where
                    E: sqlx::Executor<'c, Database = <$conn as sqlx::Connection>::Database>,
                {
                    let sql = finish_calls_sql(chunk.len());
                    let mut q = sqlx::query(&sql);
                    for (id, e) in chunk {
                        q = q
                            .bind(*id)
                            .bind(e.answered_ms)
                            .bind(e.ended_ms)
                            .bind(e.outcome.map(|o| o.as_str()))
                            .bind(e.sip_status.map(i32::from))
                            .bind(e.ring_ms)
                            .bind(e.trunk.as_deref())
                            .bind(e.caller_id.as_deref())
                            .bind(e.amd.map(|v| v.as_str()))
                            .bind(e.amd_ms)
                            .bind(e.recording.as_deref());
                    }
                    let first = chunk.first().map_or(0, |c| c.0);
                    let done = q
                        .execute(conn)
                        .await
                        .map_err(|err| StoreError::from_sqlx(err, Entity::Call, first))?;
                    if done.rows_affected() != chunk.len() as u64 {
                        return Err(StoreError::NotFound { entity: Entity::Call, id: format!("one of {} records", chunk.len()) });
                    }
                    Ok(())
                }
                if ends.len() <= FINISH_CALLS_ROWS {
                    return chunk(self.write_pool(), ends).await;
                }
                let mut tx = self.begin_write().await?;
                for c in ends.chunks(FINISH_CALLS_ROWS) {
                    chunk(&mut *tx, c).await?;
                }
                tx.commit().await?;
                Ok(())
            }

            pub(crate) async fn set_call_notes(
                &self,
                id: i64,
                notes: &str,
            ) -> Result<CallRecord, StoreError> {
                let sql = format!("UPDATE calls SET notes = $1 WHERE id = $2 RETURNING {CALL_COLUMNS}");
                let row = sqlx::query(&sql)
                    .bind(notes)
                    .bind(id)
                    .fetch_one(self.pool())
                    .await
                    .map_err(|e| StoreError::from_sqlx(e, Entity::Call, id))?;
                call_from_row(&row)
            }

            pub(crate) async fn get_call(&self, id: i64) -> Result<CallRecord, StoreError> {
                let sql = format!("SELECT {CALL_COLUMNS} FROM calls WHERE id = $1");
                let row = sqlx::query(&sql)
                    .bind(id)
                    .fetch_one(self.pool())
                    .await
                    .map_err(|e| StoreError::from_sqlx(e, Entity::Call, id))?;
                call_from_row(&row)
            }

            pub(crate) async fn list_calls(
                &self,
                f: CallFilter,
                after: Option<CallCursor>,
                limit: u32,
            ) -> Result<Vec<CallRecord>, StoreError> {
                // NULL filters match everything, so one statement serves
                // every combination.
                let sql = format!(
                    "SELECT {CALL_COLUMNS} FROM calls \
                     WHERE ($1 IS NULL OR session_id = $1) AND ($2 IS NULL OR lead_id = $2) \
                     AND (started_ms > $3 OR (started_ms = $3 AND id > $4)) \
                     ORDER BY started_ms, id LIMIT $5"
                );
                let (after_ms, after_id) = after.unwrap_or((i64::MIN, i64::MIN));
                let rows = sqlx::query(&sql)
                    .bind(f.session_id)
                    .bind(f.lead_id)
                    .bind(after_ms)
                    .bind(after_id)
                    .bind(i64::from(limit))
                    .fetch_all(self.pool())
                    .await?;
                rows.iter().map(call_from_row).collect()
            }

            pub(crate) async fn recent_lead_calls(
                &self,
                lead_id: i64,
                limit: i64,
            ) -> Result<Vec<CallRecord>, StoreError> {
                let sql = format!(
                    "SELECT {CALL_COLUMNS} FROM calls WHERE lead_id = $1 \
                     ORDER BY started_ms DESC, id DESC LIMIT $2"
                );
                let rows = sqlx::query(&sql)
                    .bind(lead_id)
                    .bind(limit)
                    .fetch_all(self.pool())
                    .await?;
                rows.iter().map(call_from_row).collect()
            }

            pub(crate) async fn create_smart_view(
                &self,
                v: &NewSmartView,
                now_ms: i64,
            ) -> Result<SmartView, StoreError> {
                let row = sqlx::query(
                    "INSERT INTO smart_views (name, query, created_ms) VALUES ($1, $2, $3) \
                     RETURNING id, name, query, created_ms",
                )
                .bind(v.name.trim())
                .bind(&v.query)
                .bind(now_ms)
                .fetch_one(self.pool())
                .await
                .map_err(|e| StoreError::from_sqlx(e, Entity::SmartView, ""))?;
                view_from_row(&row)
            }

            pub(crate) async fn get_smart_view(&self, id: i64) -> Result<SmartView, StoreError> {
                let row = sqlx::query("SELECT id, name, query, created_ms FROM smart_views WHERE id = $1")
                    .bind(id)
                    .fetch_one(self.pool())
                    .await
                    .map_err(|e| StoreError::from_sqlx(e, Entity::SmartView, id))?;
                view_from_row(&row)
            }

            pub(crate) async fn list_smart_views(&self) -> Result<Vec<SmartView>, StoreError> {
                let rows = sqlx::query("SELECT id, name, query, created_ms FROM smart_views ORDER BY id")
                    .fetch_all(self.pool())
                    .await?;
                rows.iter().map(view_from_row).collect()
            }

            pub(crate) async fn upsert_registration(&self, r: &Registration) -> Result<(), StoreError> {
                sqlx::query(
                    "INSERT INTO registrations (aor, contact, expires_ms, call_id, cseq, q, transport, source) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
                     ON CONFLICT (aor, contact) DO UPDATE SET expires_ms = excluded.expires_ms, \
                     call_id = excluded.call_id, cseq = excluded.cseq, q = excluded.q, \
                     transport = excluded.transport, source = excluded.source",
                )
                .bind(&r.aor)
                .bind(&r.contact)
                .bind(r.expires_ms)
                .bind(&r.call_id)
                .bind(r.cseq)
                .bind(r.q)
                .bind(&r.transport)
                .bind(&r.source)
                .execute(self.pool())
                .await
                .map_err(|e| StoreError::from_sqlx(e, Entity::Registration, &r.aor))?;
                Ok(())
            }

            pub(crate) async fn delete_registration(
                &self,
                aor: &str,
                contact: &str,
            ) -> Result<bool, StoreError> {
                let done = sqlx::query("DELETE FROM registrations WHERE aor = $1 AND contact = $2")
                    .bind(aor)
                    .bind(contact)
                    .execute(self.pool())
                    .await?;
                Ok(done.rows_affected() > 0)
            }

            pub(crate) async fn delete_registrations(&self, aor: &str) -> Result<u64, StoreError> {
                let done = sqlx::query("DELETE FROM registrations WHERE aor = $1")
                    .bind(aor)
                    .execute(self.pool())
                    .await?;
                Ok(done.rows_affected())
            }

            pub(crate) async fn delete_expired_registrations(&self, now_ms: i64) -> Result<u64, StoreError> {
                let done = sqlx::query("DELETE FROM registrations WHERE expires_ms <= $1")
                    .bind(now_ms)
                    .execute(self.pool())
                    .await?;
                Ok(done.rows_affected())
            }

            pub(crate) async fn load_registrations(&self) -> Result<Vec<Registration>, StoreError> {
                let rows = sqlx::query(
                    "SELECT aor, contact, expires_ms, call_id, cseq, q, transport, source \
                     FROM registrations ORDER BY aor, contact",
                )
                .fetch_all(self.pool())
                .await?;
                rows.iter().map(registration_from_row).collect()
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_number_every_parameter_once() {
        assert_eq!(placeholders(3), "$1, $2, $3");
        assert_eq!(row_placeholders(2, 3), "($1, $2, $3), ($4, $5, $6)");
        assert_eq!(
            typed_row_placeholders(2, &["BIGINT", "TEXT"]),
            "(CAST($1 AS BIGINT), CAST($2 AS TEXT)), (CAST($3 AS BIGINT), CAST($4 AS TEXT))"
        );
        assert_eq!(row_placeholders(1, 1), "($1)");
        assert_eq!(row_placeholders(0, 4), "");
    }
}
