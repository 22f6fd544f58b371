//! The running sessions of this instance: creation, lookup by id or share
//! token (R16), settings, restart of stored sessions, the events stream and
//! the R6 change notifications (including PostgreSQL LISTEN/NOTIFY).
//!
//! [`Sessions`] is not generic, so `AppState` can hold it: the call engine
//! type is captured once, in [`Sessions::start`].

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;

use super::dial::Dialer;
use super::record::{self, SessionRow};
use super::session::{
    self, Clock, LeadsChanged, SessionConfig, SessionError, SessionEvent, SessionHandle, Shared,
};
use crate::store::Store;

type SpawnFuture = Pin<Box<dyn Future<Output = Result<SessionHandle, SessionError>> + Send>>;
type Spawner = Box<dyn Fn(SessionRow) -> SpawnFuture + Send + Sync>;

struct Inner {
    store: Store,
    handles: Mutex<HashMap<i64, SessionHandle>>,
    spawn: Spawner,
    wall_ms: Box<dyn Fn() -> i64 + Send + Sync>,
    events: broadcast::Sender<SessionEvent>,
    leads_changed: LeadsChanged,
    /// Serialises loading sessions created by another instance, so one
    /// session never gets two tasks here.
    loading: tokio::sync::Mutex<()>,
}

/// This instance's dialer sessions (cheap to clone).
#[derive(Clone)]
pub struct Sessions {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions").finish_non_exhaustive()
    }
}

impl Sessions {
    /// Hands each running session the calls of its own that the crash
    /// sweep gave an outcome (`call::recovery`), so its lead histories
    /// count them (R3: a skipped lead is retried after the others; R5: an
    /// answered one is not called again).
    pub async fn apply_recovered(&self, calls: &[crate::call::recovery::RecoveredCall]) {
        let mut by_session: HashMap<i64, Vec<(i64, super::dial::CallOutcome)>> = HashMap::new();
        for c in calls {
            if let (Some(s), Some(l)) = (c.session_id, c.lead_id) {
                by_session.entry(s).or_default().push((l, c.outcome));
            }
        }
        for (id, leads) in by_session {
            let handle = self
                .inner
                .handles
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .get(&id)
                .cloned();
            if let Some(h) = handle {
                if let Err(e) = h.recovered(leads).await {
                    tracing::warn!(session = id, error = %e, "recovered calls not applied");
                }
            }
        }
    }

    /// Starts the sessions service: resumes every stored session (SPEC §1:
    /// agents paused through the API stay paused, the others are called
    /// back), and in PostgreSQL mode listens for lead changes made by
    /// other instances (R6).
    pub async fn start<D: Dialer, C: Clock + Clone>(
        store: Store,
        dialer: D,
        clock: C,
        config: SessionConfig,
    ) -> Result<Sessions, SessionError> {
        let (events, _) = broadcast::channel(1024);
        let leads_changed = LeadsChanged::default();
        let shared = Arc::new(Shared {
            store: store.clone(),
            dialer,
            clock: clock.clone(),
            config,
            events: events.clone(),
            leads_changed: leads_changed.clone(),
        });
        let spawn: Spawner = Box::new(move |row| {
            let shared = shared.clone();
            Box::pin(session::spawn(shared, row))
        });
        let sessions = Sessions {
            inner: Arc::new(Inner {
                store: store.clone(),
                handles: Mutex::new(HashMap::new()),
                spawn,
                wall_ms: Box::new(move || clock.wall_ms()),
                events,
                leads_changed: leads_changed.clone(),
                loading: tokio::sync::Mutex::new(()),
            }),
        };
        for row in record::list_sessions(&store).await? {
            let id = row.id;
            match (sessions.inner.spawn)(row).await {
                Ok(h) => sessions.insert(h),
                Err(e) => tracing::warn!(session = id, error = %e, "session not resumed"),
            }
        }
        if let Store::Postgres(pg) = &store {
            let pool = pg.pool().clone();
            let tag = pg.instance_tag().to_string();
            tokio::spawn(listen(pool, tag, leads_changed));
        }
        Ok(sessions)
    }

    fn insert(&self, h: SessionHandle) {
        if let Ok(mut m) = self.inner.handles.lock() {
            m.insert(h.id(), h);
        }
    }

    /// The events stream (`GET /api/v1/events`).
    pub fn subscribe(&self) -> broadcast::Receiver<SessionEvent> {
        self.inner.events.subscribe()
    }

    /// The R6 change counter: poke it after changing leads.
    pub fn leads_changed(&self) -> &LeadsChanged {
        &self.inner.leads_changed
    }

    /// Creates a session on a Smart View and starts it; returns it with its
    /// share token (R16: returned once, stored hashed).
    pub async fn create(
        &self,
        smart_view_id: i64,
        reduced_ring_time: bool,
        wrap_up_idle_ms: Option<i64>,
    ) -> Result<(SessionRow, String), SessionError> {
        self.create_with_hours(
            smart_view_id,
            reduced_ring_time,
            wrap_up_idle_ms,
            None,
            None,
        )
        .await
    }

    /// [`Self::create`] with the session's own calling hours (SPEC §4;
    /// `None`: the config's).
    pub async fn create_with_hours(
        &self,
        smart_view_id: i64,
        reduced_ring_time: bool,
        wrap_up_idle_ms: Option<i64>,
        calling_hours: Option<super::hours::Window>,
        caller_id: Option<String>,
    ) -> Result<(SessionRow, String), SessionError> {
        let token = record::new_share_token(&mut rand::rngs::OsRng);
        let mut row = record::create_session(
            &self.inner.store,
            smart_view_id,
            reduced_ring_time,
            wrap_up_idle_ms,
            &record::hash_token(&token),
            (self.inner.wall_ms)(),
        )
        .await?;
        if calling_hours.is_some() {
            // Before the session starts, so it never runs on other hours.
            record::set_calling_hours(&self.inner.store, row.id, calling_hours).await?;
            row.calling_hours = calling_hours;
        }
        if caller_id.is_some() {
            record::set_caller_id(&self.inner.store, row.id, caller_id.as_deref()).await?;
            row.caller_id = caller_id;
        }
        let h = (self.inner.spawn)(row.clone()).await?;
        self.insert(h);
        Ok((row, token))
    }

    /// [`Self::get`], or a session another instance created since this one
    /// started (several instances on one PostgreSQL database, R13): it is
    /// read from the database and started here too; the database claims
    /// keep the instances from dialing a lead twice.
    pub async fn get_or_load(&self, id: i64) -> Result<SessionHandle, SessionError> {
        if let Ok(h) = self.get(id) {
            return Ok(h);
        }
        let _loading = self.inner.loading.lock().await;
        if let Ok(h) = self.get(id) {
            return Ok(h);
        }
        let row = record::get_session(&self.inner.store, id)
            .await?
            .ok_or(SessionError::NoSession(id))?;
        let h = (self.inner.spawn)(row).await?;
        self.insert(h.clone());
        tracing::info!(session = id, "session created elsewhere started here");
        Ok(h)
    }

    /// The running session `id`.
    pub fn get(&self, id: i64) -> Result<SessionHandle, SessionError> {
        self.inner
            .handles
            .lock()
            .ok()
            .and_then(|m| m.get(&id).cloned())
            .ok_or(SessionError::NoSession(id))
    }

    /// Every session running here, oldest first (`GET /api/v1/sessions`).
    pub fn running(&self) -> Vec<SessionHandle> {
        let mut all: Vec<SessionHandle> = self
            .inner
            .handles
            .lock()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        all.sort_by_key(SessionHandle::id);
        all
    }

    /// Changes the settings (R8 reduced ring time, wrap-up idle).
    pub async fn update_settings(
        &self,
        id: i64,
        reduced_ring_time: Option<bool>,
        wrap_up_idle_ms: Option<Option<i64>>,
    ) -> Result<SessionRow, SessionError> {
        self.update_settings_with_hours(id, reduced_ring_time, wrap_up_idle_ms, None, None)
            .await
    }

    /// [`Self::update_settings`], and the calling hours (SPEC §4):
    /// `Some(None)` goes back to the config's, `None` keeps them.
    pub async fn update_settings_with_hours(
        &self,
        id: i64,
        reduced_ring_time: Option<bool>,
        wrap_up_idle_ms: Option<Option<i64>>,
        calling_hours: Option<Option<super::hours::Window>>,
        caller_id: Option<Option<String>>,
    ) -> Result<SessionRow, SessionError> {
        let h = self.get(id)?;
        let row = record::get_session(&self.inner.store, id)
            .await?
            .ok_or(SessionError::NoSession(id))?;
        let reduced = reduced_ring_time.unwrap_or(row.reduced_ring_time);
        let wrap = wrap_up_idle_ms.unwrap_or(row.wrap_up_idle_ms);
        record::update_settings(&self.inner.store, id, reduced, wrap).await?;
        if let Some(hours) = calling_hours {
            record::set_calling_hours(&self.inner.store, id, hours).await?;
        }
        if let Some(c) = caller_id {
            record::set_caller_id(&self.inner.store, id, c.as_deref()).await?;
        }
        let row = record::get_session(&self.inner.store, id)
            .await?
            .ok_or(SessionError::NoSession(id))?;
        h.settings(row.clone()).await?;
        Ok(row)
    }

    /// Changes the answering-machine and recording settings (SPEC §4);
    /// `None` keeps a setting, `Some(None)` clears the voicemail drop.
    pub async fn set_media_settings(
        &self,
        id: i64,
        amd: Option<crate::media::amd::AmdMode>,
        voicemail_drop_id: Option<Option<i64>>,
        record: Option<bool>,
    ) -> Result<SessionRow, SessionError> {
        let h = self.get(id)?;
        let row = record::get_session(&self.inner.store, id)
            .await?
            .ok_or(SessionError::NoSession(id))?;
        record::set_media_settings(
            &self.inner.store,
            id,
            amd.unwrap_or(row.amd),
            voicemail_drop_id.unwrap_or(row.voicemail_drop_id),
            record.unwrap_or(row.record),
        )
        .await?;
        let row = record::get_session(&self.inner.store, id)
            .await?
            .ok_or(SessionError::NoSession(id))?;
        h.settings(row.clone()).await?;
        Ok(row)
    }

    /// R16: a new share token (the old one stops working); returned once.
    pub async fn rotate_share(&self, id: i64) -> Result<String, SessionError> {
        let token = record::new_share_token(&mut rand::rngs::OsRng);
        if !record::set_share_hash(&self.inner.store, id, Some(&record::hash_token(&token))).await?
        {
            return Err(SessionError::NoSession(id));
        }
        self.refresh_row(id).await?;
        Ok(token)
    }

    /// R16: revokes the share link.
    pub async fn revoke_share(&self, id: i64) -> Result<(), SessionError> {
        if !record::set_share_hash(&self.inner.store, id, None).await? {
            return Err(SessionError::NoSession(id));
        }
        self.refresh_row(id).await
    }

    async fn refresh_row(&self, id: i64) -> Result<(), SessionError> {
        if let Some(row) = record::get_session(&self.inner.store, id).await? {
            self.get(id)?.settings(row).await?;
        }
        Ok(())
    }

    /// R16: the session a share token opens, if it is valid and not revoked.
    pub async fn session_for_token(&self, token: &str) -> Result<Option<i64>, SessionError> {
        Ok(record::find_by_share_hash(&self.inner.store, &record::hash_token(token)).await?)
    }
}

/// R6 across instances: `LISTEN powerdial_leads` (the migration's triggers
/// NOTIFY on every change to leads and calls) and poke the sessions.
/// Reconnects after a lost connection, poking once since changes may have
/// been missed meanwhile.
async fn listen(pool: sqlx::PgPool, own_tag: String, changed: LeadsChanged) {
    loop {
        match sqlx::postgres::PgListener::connect_with(&pool).await {
            Ok(mut l) => {
                if let Err(e) = l.listen("powerdial_leads").await {
                    tracing::warn!(error = %e, "LISTEN failed");
                } else {
                    changed.poke();
                    loop {
                        match l.recv().await {
                            // This instance's own changes were signalled
                            // when made, with their leads (migration 0049).
                            Ok(n) if n.payload().ends_with(own_tag.as_str()) => {}
                            Ok(_) => changed.poke(),
                            Err(e) => {
                                tracing::warn!(error = %e, "LISTEN connection lost");
                                break;
                            }
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "LISTEN connection failed"),
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

impl Sessions {
    /// Every running session's own caller ID (callback numbers, SPEC §1).
    pub async fn caller_ids(&self) -> Vec<String> {
        let mut out = Vec::new();
        for h in self.running() {
            if let Ok(view) = h.view().await {
                out.extend(view.row.caller_id);
            }
        }
        out.sort();
        out.dedup();
        out
    }
}

/// The agents of this instance's sessions, for the callback router (SPEC
/// §1 "Leads calling back").
impl crate::call::callback::SessionMembers for Sessions {
    fn members(&self) -> crate::call::callback::MembersFuture<'_> {
        Box::pin(async move {
            let mut out = Vec::new();
            for h in self.running() {
                let Ok(view) = h.view().await else { continue };
                for a in view.agents {
                    if a.state != super::agent::AgentState::Left {
                        out.push((a.agent, h.id()));
                    }
                }
            }
            out
        })
    }
}
