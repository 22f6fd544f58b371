//! The dial audit's storage on both backends: the batching writer keeps
//! every entry it is handed, and the list filters and pages them.

mod common;

use std::time::Duration;

use powerdial::store::audit::{AuditAction, AuditEntry, AuditFilter, AuditLog, AuditReason};

fn entry(i: i64, reason: AuditReason, session: Option<i64>) -> AuditEntry {
    AuditEntry {
        id: 0,
        at_ms: 1_800_000_000_000 + i * 1000,
        action: AuditAction::Held,
        reason,
        session_id: session,
        lead_id: Some(100 + i),
        agent: Some("alice".into()),
        number: Some(format!("+1415555{i:04}")),
        detail: format!("entry {i}"),
    }
}

#[tokio::test]
async fn the_writer_keeps_every_entry_and_the_list_filters_them() {
    for db in common::all_dbs("the_writer_keeps_every_entry_and_the_list_filters_them").await {
        let log = AuditLog::start(db.store.clone());
        // More than one batch's worth, from two senders at once.
        let other = log.clone();
        let a = tokio::spawn(async move {
            for i in 0..1500 {
                other
                    .record(entry(i, AuditReason::CallingHours, Some(1)))
                    .await;
            }
        });
        for i in 1500..1600 {
            log.record(entry(i, AuditReason::DoNotCall, None)).await;
        }
        a.await.expect("sender");
        let all = |filter| {
            let store = db.store.clone();
            async move { store.list_audit(filter, 0, 5000).await.expect("list") }
        };
        let mut n = 0;
        for _ in 0..250 {
            n = all(AuditFilter::default()).await.len();
            if n == 1600 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(n, 1600, "{}: every entry stored", db.backend);

        let dnc = all(AuditFilter {
            reason: Some(AuditReason::DoNotCall),
            ..AuditFilter::default()
        })
        .await;
        assert_eq!(dnc.len(), 100, "{}", db.backend);
        assert!(dnc.iter().all(|e| e.session_id.is_none()));
        let session = all(AuditFilter {
            session_id: Some(1),
            lead_id: Some(100 + 7),
            ..AuditFilter::default()
        })
        .await;
        assert_eq!(session.len(), 1, "{}", db.backend);
        assert_eq!(session[0].detail, "entry 7");
        assert_eq!(session[0].number.as_deref(), Some("+14155550007"));
        let since = all(AuditFilter {
            since_ms: Some(1_800_000_000_000 + 1590 * 1000),
            ..AuditFilter::default()
        })
        .await;
        assert_eq!(since.len(), 10, "{}", db.backend);
        // Keyset pages by id.
        let first = db
            .store
            .list_audit(AuditFilter::default(), 0, 10)
            .await
            .expect("page");
        let second = db
            .store
            .list_audit(AuditFilter::default(), first[9].id, 10)
            .await
            .expect("page");
        assert!(second[0].id > first[9].id);
        drop(log);
        db.cleanup().await;
    }
}

/// A graceful stop flushes the audit log: once `flush` returns, every
/// entry recorded before it is in the database (no polling, no sleep).
#[tokio::test]
async fn flush_returns_once_everything_recorded_is_stored() {
    for db in common::all_dbs("flush_returns_once_everything_recorded_is_stored").await {
        let log = AuditLog::start(db.store.clone());
        for i in 0..2_500 {
            log.record(entry(i, AuditReason::Holiday, Some(7))).await;
        }
        log.flush().await;
        let stored = db
            .store
            .list_audit(AuditFilter::default(), 0, 5_000)
            .await
            .expect("list");
        assert_eq!(
            stored.len(),
            2_500,
            "{}: flushed entries stored",
            db.backend
        );
        // A flush with nothing pending returns too.
        log.flush().await;
    }
}
