//! Call recordings' writer and retention (SPEC §4 session `record`,
//! `[recording] retention_days`): the relay hands frames over a bounded
//! channel ([`crate::media::recording`]); this task assembles them and,
//! once the lead leg closes the channel, writes
//! `<data_dir>/recordings/<call id>.wav` and names it on the call record —
//! all off the signalling path.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Shared;
use crate::leads::model::CallEnd;
use crate::media::recording::{RecFrame, Recording};

/// Frames in flight to the writer (5 s of both directions): more is a
/// writer that cannot keep up, and frames are dropped.
const CHANNEL: usize = 500;

/// Starts the writer of call `call_id`'s recording, whose timeline begins
/// at `start` (the answer); returns the relay's end of its channel.
pub(super) fn spawn_recorder(
    shared: &Arc<Shared>,
    call_id: i64,
    start: Instant,
) -> mpsc::Sender<RecFrame> {
    let (tx, mut rx) = mpsc::channel::<RecFrame>(CHANNEL);
    let shared = shared.clone();
    shared.tasks.clone().spawn(async move {
        let mut rec = Recording::new(start);
        while let Some(f) = rx.recv().await {
            rec.push(&f);
        }
        if rec.seconds() == 0.0 {
            return;
        }
        let dir = shared.data_dir.join("recordings");
        let file = format!("{call_id}.wav");
        let path = dir.join(&file);
        let bytes = rec.to_wav();
        let written = async {
            tokio::fs::create_dir_all(&dir).await?;
            tokio::fs::write(&path, bytes).await
        }
        .await;
        if let Err(e) = written {
            tracing::error!(call_id, path = %path.display(), error = %e, "recording not written");
            return;
        }
        let end = CallEnd {
            recording: Some(file),
            ..CallEnd::default()
        };
        if let Err(e) = shared.store.finish_call(call_id, &end).await {
            tracing::warn!(call_id, error = %e, "recording not named on the call record");
        }
        tracing::info!(call_id, seconds = rec.seconds(), "call recorded");
    });
    tx
}

/// Deletes recordings older than `days` from `dir` every hour (`days`
/// 0: never), until `stop`.
pub(super) async fn retention(dir: PathBuf, days: u32, stop: CancellationToken) {
    if days == 0 {
        return;
    }
    let max_age = Duration::from_secs(u64::from(days) * 86_400);
    loop {
        if let Err(e) = sweep(&dir, max_age).await {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(dir = %dir.display(), error = %e, "recording retention sweep failed");
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(3600)) => {}
        }
    }
}

#[allow(clippy::disallowed_methods)] // a driver: file ages are wall-clock
async fn sweep(dir: &std::path::Path, max_age: Duration) -> std::io::Result<()> {
    let now = SystemTime::now();
    let mut entries = tokio::fs::read_dir(dir).await?;
    let mut removed = 0u32;
    while let Some(e) = entries.next_entry().await? {
        let Ok(meta) = e.metadata().await else {
            continue;
        };
        let old = meta
            .modified()
            .ok()
            .and_then(|m| now.duration_since(m).ok())
            .is_some_and(|age| age > max_age);
        if meta.is_file() && old && tokio::fs::remove_file(e.path()).await.is_ok() {
            removed += 1;
        }
    }
    if removed > 0 {
        tracing::info!(
            removed,
            "recordings past [recording] retention_days deleted"
        );
    }
    Ok(())
}
