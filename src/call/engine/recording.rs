//! Call recordings' writer and retention (SPEC §4 session `record`,
//! `[recording] retention_days`): the relay hands frames over a bounded
//! channel ([`crate::media::recording`]); this task assembles them,
//! streams `<data_dir>/recordings/<call id>.wav` as the call goes on and,
//! once the lead leg closes the channel, completes the file and names it
//! on the call record — all off the signalling path.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Shared;
use crate::leads::model::CallEnd;
use crate::media::recording::{Recording, TapFrame};

/// Frames in flight to the writer (5 s of both directions): more is a
/// writer that cannot keep up, and frames are dropped.
const CHANNEL: usize = 500;

/// Starts the writer of call `call_id`'s recording, whose timeline begins
/// at `start` (the answer); returns the relay's end of its channel.
pub(super) fn spawn_recorder(
    shared: &Arc<Shared>,
    call_id: i64,
    start: Instant,
) -> mpsc::Sender<TapFrame> {
    let (tx, rx) = mpsc::channel::<TapFrame>(CHANNEL);
    let shared = shared.clone();
    shared.tasks.clone().spawn(async move {
        let dir = shared.data_dir.join("recordings");
        let file = format!("{call_id}.wav");
        let path = dir.join(&file);
        let seconds = match record(rx, start, &dir, &path).await {
            Ok(seconds) if seconds <= 0.0 => {
                // Nothing was heard: no file, nothing on the record.
                let _ = tokio::fs::remove_file(&path).await;
                return;
            }
            Ok(seconds) => seconds,
            Err(e) => {
                tracing::error!(call_id, path = %path.display(), error = %e, "recording not written");
                return;
            }
        };
        let end = CallEnd {
            recording: Some(file),
            ..CallEnd::default()
        };
        if let Err(e) = shared.store.finish_call(call_id, &end).await {
            tracing::warn!(call_id, error = %e, "recording not named on the call record");
        }
        tracing::info!(call_id, seconds, "call recorded");
    });
    tx
}

/// Streams the frames from `rx` to a WAV at `path` as they become final
/// (see [`Recording::take_ready`]), so a call holds a few hundred
/// milliseconds of audio in memory however long it lasts; the header's
/// sizes are written when the relay closes the channel (the call's end).
/// Returns the seconds recorded.
async fn record(
    mut rx: mpsc::Receiver<TapFrame>,
    start: Instant,
    dir: &std::path::Path,
    path: &std::path::Path,
) -> std::io::Result<f64> {
    use tokio::io::{AsyncSeekExt, AsyncWriteExt};

    let mut rec = Recording::new(start);
    // Opened at the first frame: a call that never carried audio leaves
    // no file behind.
    let mut out: Option<tokio::io::BufWriter<tokio::fs::File>> = None;
    let mut samples: u64 = 0;
    let mut bytes = Vec::new();
    loop {
        let frame = rx.recv().await;
        let ready = match &frame {
            Some(f) => {
                rec.push(&f.decode());
                rec.take_ready()
            }
            None => rec.finish(),
        };
        if !ready.is_empty() {
            let w = match &mut out {
                Some(w) => w,
                None => {
                    tokio::fs::create_dir_all(dir).await?;
                    let mut w = tokio::io::BufWriter::new(tokio::fs::File::create(path).await?);
                    // Sizes are patched at the end.
                    w.write_all(&crate::media::voicemail::write_wav(&[], 2))
                        .await?;
                    out.insert(w)
                }
            };
            bytes.clear();
            bytes.extend(ready.iter().flat_map(|s| s.to_le_bytes()));
            w.write_all(&bytes).await?;
            samples += ready.len() as u64;
        }
        if frame.is_none() {
            break;
        }
    }
    let Some(mut w) = out else {
        return Ok(0.0);
    };
    let data = u32::try_from(samples * 2).unwrap_or(u32::MAX);
    w.flush().await?;
    let mut f = w.into_inner();
    f.seek(std::io::SeekFrom::Start(4)).await?;
    f.write_all(&data.saturating_add(36).to_le_bytes()).await?;
    f.seek(std::io::SeekFrom::Start(40)).await?;
    f.write_all(&data.to_le_bytes()).await?;
    f.sync_data().await?;
    Ok(rec.seconds())
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
