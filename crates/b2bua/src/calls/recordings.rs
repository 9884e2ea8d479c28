//! Keeping the recordings directory within `[recording] retention_days`: once at start-up
//! and then every hour, the `*.wav` files older than that are deleted, off the runtime's
//! threads (the directory walk and the deletions are blocking I/O).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Deletes the recordings in `dir` last written before `now - keep`; returns how many.
/// Files that are not `.wav`, and anything that cannot be read, are left alone.
pub fn prune(dir: &Path, keep: Duration, now: SystemTime) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let Some(cutoff) = now.checked_sub(keep) else {
        return 0;
    };
    let mut removed = 0;
    for e in entries.flatten() {
        let path = e.path();
        if path.extension().is_none_or(|x| x != "wav") {
            continue;
        }
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| t < cutoff);
        if old && e.file_type().is_ok_and(|t| t.is_file()) {
            match std::fs::remove_file(&path) {
                Ok(()) => removed += 1,
                Err(err) => {
                    tracing::warn!(file = %path.display(), error = %err, "old recording not deleted")
                }
            }
        }
    }
    removed
}

/// Prunes `dir` now and every hour, keeping `days` days; nothing when `days` is 0.
pub fn spawn_retention(dir: PathBuf, days: u32) -> Option<tokio::task::JoinHandle<()>> {
    if days == 0 {
        return None;
    }
    let keep = Duration::from_secs(u64::from(days) * 86_400);
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(3600));
        loop {
            tick.tick().await;
            let d = dir.clone();
            let n = tokio::task::spawn_blocking(move || prune(&d, keep, SystemTime::now()))
                .await
                .unwrap_or(0);
            if n > 0 {
                tracing::info!(removed = n, days, "recordings past their retention deleted");
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_wav_files_older_than_the_retention_go() {
        let dir = std::env::temp_dir().join(format!("rec-retention-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let now = SystemTime::now();
        let write = |name: &str, age_days: u64| {
            let p = dir.join(name);
            std::fs::write(&p, b"RIFF").unwrap();
            let f = std::fs::File::options().write(true).open(&p).unwrap();
            f.set_modified(now - Duration::from_secs(age_days * 86_400))
                .unwrap();
            p
        };
        let old = write("call_old.wav", 40);
        let fresh = write("call_fresh.wav", 2);
        let other = write("notes.txt", 400);
        assert_eq!(prune(&dir, Duration::from_secs(30 * 86_400), now), 1);
        assert!(!old.exists());
        assert!(fresh.exists());
        assert!(other.exists(), "only recordings are touched");
        assert_eq!(prune(&dir.join("absent"), Duration::ZERO, now), 0);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
