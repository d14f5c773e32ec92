//! Noticing changed files by polling: cheap (a `stat` per file per tick),
//! and it sees what inotify on the path would miss, such as a Secret or
//! ConfigMap volume swapping its `..data` symlink.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

/// A file's modification time, length and inode.
pub type Fingerprint = (SystemTime, u64, u64);

/// What identifies a file's version, following symlinks.
pub fn fingerprint(path: &Path) -> Option<Fingerprint> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len(), m.ino()))
}

/// Calls `changed` each time any of `paths` changes (checked every
/// `every`) until `cancel` fires.
pub async fn on_change(
    paths: Vec<PathBuf>,
    every: Duration,
    cancel: CancellationToken,
    mut changed: impl FnMut(),
) {
    if paths.is_empty() {
        return;
    }
    let look = || -> Vec<Option<Fingerprint>> { paths.iter().map(|p| fingerprint(p)).collect() };
    let mut seen = look();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = look();
        if now != seen {
            seen = now;
            changed();
        }
    }
}
