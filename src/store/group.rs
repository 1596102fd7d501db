//! Group commit: instances that finish arriving at the same time, on different associations,
//! share the steps of the durability protocol that can be shared.
//!
//! Every instance still gets the whole protocol before its success status. Its own thread
//! writes and `fdatasync`s its file (so the flushes of concurrent instances sit in the disk's
//! queue together, see [`super::Store::commit`]); the batch then renames every file into place,
//! fsyncs each directory once however many files went into it, and writes all the index rows
//! in one SQLite transaction.
//!
//! There is no committer thread. The first thread to arrive with nothing in flight becomes the
//! leader and commits whatever is queued when it starts; threads arriving meanwhile queue up
//! and wait. When the leader's batch is done it answers every member and hands leadership to
//! the first thread that queued during its batch, which then commits that whole queue. A lone
//! association therefore never changes thread or waits for anyone, and under load a batch
//! holds what arrived while the previous one was on the disk, as in a database's group commit.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, SyncSender};
use std::sync::{Mutex, MutexGuard};

use tracing::{debug, warn};

use super::StoreError;
use super::{Index, NewRow};

/// A checked instance whose temp file is complete, waiting to be made durable under `path`.
pub(super) struct Pending {
    pub temp: tempfile::NamedTempFile,
    pub path: PathBuf,
    pub row: NewRow,
    /// A hard link (in `tmp/`) to the file this instance replaces (`on_conflict = replace`),
    /// so that a refused commit can put the acknowledged earlier file back.
    pub backup: Option<PathBuf>,
}

/// What a waiting thread is woken with.
enum Turn {
    /// Its instance was committed, or why not.
    Done(Result<(), StoreError>),
    /// The previous leader is done: commit the queue.
    Lead,
}

#[derive(Default)]
struct Queue {
    waiting: Vec<(Pending, SyncSender<Turn>)>,
    /// Some thread is committing a batch (or has been told to).
    leading: bool,
    /// Batches taken and instances in them, which tests check batching by.
    batches: u64,
    instances: u64,
}

/// The commit queue of one store.
#[derive(Default)]
pub(super) struct GroupCommit {
    queue: Mutex<Queue>,
    /// A refused file could not be taken back out of the tree, so a file without an index
    /// row may exist: the next start must repair even after a clean stop.
    needs_repair: AtomicBool,
}

impl GroupCommit {
    /// Commits `pending` (alone or with whatever else is queued) and returns when it is
    /// durable and indexed, or failed. Blocking.
    pub fn commit(&self, pending: Pending, sync: bool, index: &Index) -> Result<(), StoreError> {
        let (tx, rx) = mpsc::sync_channel(1);
        {
            let mut q = self.lock();
            q.waiting.push((pending, tx));
            if q.leading {
                drop(q);
                match rx.recv() {
                    Ok(Turn::Done(result)) => return result,
                    Ok(Turn::Lead) => {}
                    Err(_) => return Err(leader_vanished()),
                }
            } else {
                q.leading = true;
            }
        }
        // We lead. Whatever happens below, the guard passes leadership on when we return.
        let guard = Leader { group: self };
        let batch = {
            let mut q = self.lock();
            q.batches += 1;
            q.instances += q.waiting.len() as u64;
            std::mem::take(&mut q.waiting)
        };
        if !write_out(batch, sync, index) {
            self.needs_repair.store(true, Ordering::Relaxed);
        }
        drop(guard);
        match rx.try_recv() {
            Ok(Turn::Done(result)) => result,
            _ => Err(leader_vanished()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        // A panic while holding this lock leaves the queue consistent (push or take), so a
        // poisoned lock is still usable.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Instances waiting for the batch in progress.
    #[cfg(test)]
    pub fn queued(&self) -> usize {
        self.lock().waiting.len()
    }

    /// Whether a refused file may have been left in the tree without an index row.
    pub fn needs_repair(&self) -> bool {
        self.needs_repair.load(Ordering::Relaxed)
    }

    /// (batches, instances) committed so far.
    pub fn counts(&self) -> (u64, u64) {
        let q = self.lock();
        (q.batches, q.instances)
    }
}

/// Hands leadership to the first thread that queued while we committed, or gives it up.
/// Runs on unwinding too, so a panic in one batch cannot leave later commits waiting forever.
struct Leader<'a> {
    group: &'a GroupCommit,
}

impl Drop for Leader<'_> {
    fn drop(&mut self) {
        let mut q = self.group.lock();
        // A queued thread that is gone (it cannot be: it blocks in recv) is skipped.
        while let Some((_, tx)) = q.waiting.first() {
            if tx.send(Turn::Lead).is_ok() {
                return;
            }
            q.waiting.remove(0);
        }
        q.leading = false;
    }
}

fn leader_vanished() -> StoreError {
    StoreError::Io(io::Error::other(
        "the commit of this instance was interrupted",
    ))
}

/// An error for each of several instances that one failed operation affected.
fn shared(e: &io::Error, what: &str) -> StoreError {
    StoreError::Io(io::Error::new(e.kind(), format!("{what}: {e}")))
}

/// A file renamed into place, waiting for its directory fsync and index row.
struct Placed {
    /// Index of its answer.
    answer: usize,
    path: PathBuf,
    row: NewRow,
    backup: Option<PathBuf>,
}

impl Placed {
    /// Takes a refused file back out of the tree: the file it replaced is put back, or the
    /// name is removed, so that no file is left that the index does not know and a re-send
    /// is written afresh rather than taken for a duplicate. False when that failed.
    fn undo(&self) -> bool {
        let result = match &self.backup {
            Some(backup) => fs::rename(backup, &self.path),
            None => fs::remove_file(&self.path),
        };
        match result {
            Ok(()) => true,
            Err(e) => {
                warn!(path = %self.path.display(), error = %e, "a refused instance could not be taken back out of the storage tree; the next start re-indexes it");
                false
            }
        }
    }
}

/// Fsyncs each directory once.
fn sync_dirs<'a>(paths: impl Iterator<Item = &'a PathBuf>) -> Vec<(PathBuf, io::Error)> {
    let dirs: BTreeSet<PathBuf> = paths
        .filter_map(|path| path.parent().map(|d| d.to_path_buf()))
        .collect();
    dirs.into_iter()
        .filter_map(|dir| match File::open(&dir).and_then(|d| d.sync_all()) {
            Ok(()) => None,
            Err(e) => Some((dir, e)),
        })
        .collect()
}

/// Commits one batch and answers each member. False when a refused file may have been left
/// in the tree without an index row.
fn write_out(batch: Vec<(Pending, SyncSender<Turn>)>, sync: bool, index: &Index) -> bool {
    let mut answers: Vec<(SyncSender<Turn>, Result<(), StoreError>)> = Vec::new();
    let mut placed: Vec<Placed> = Vec::new();
    let mut clean = true;
    for (pending, tx) in batch {
        let Pending {
            temp,
            path,
            row,
            backup,
        } = pending;
        let result = temp.persist(&path).map(|_| ()).map_err(|e| e.error.into());
        match &result {
            Ok(()) => placed.push(Placed {
                answer: answers.len(),
                path,
                row,
                backup,
            }),
            // Nothing was replaced: the earlier file is still in place.
            Err(_) => remove_backup(backup),
        }
        answers.push((tx, result));
    }

    if sync {
        let flush = std::time::Instant::now();
        let failed = sync_dirs(placed.iter().map(|p| &p.path));
        crate::metrics::fsync_directories(flush.elapsed());
        for (dir, e) in failed {
            warn!(dir = %dir.display(), error = %e, "directory fsync failed; the instances renamed into it are refused");
            // Not durable, so not acknowledged: take the files back.
            let (failed, kept): (Vec<_>, Vec<_>) = placed
                .into_iter()
                .partition(|p| p.path.parent() == Some(dir.as_path()));
            placed = kept;
            for p in failed {
                clean &= p.undo();
                answers[p.answer].1 = Err(shared(&e, "directory fsync failed"));
            }
        }
    }

    if let Err(e) = index.upsert_all(placed.iter().map(|p| &p.row)) {
        // The whole transaction is rolled back, so every file of the batch is refused and
        // taken back out: a file the sender was told is not stored must not stay in the tree
        // unindexed (it would be invisible to series tracking until the next repair).
        warn!(instances = placed.len(), error = %e, "index update failed; the batch's instances are refused and their files taken back");
        for p in &placed {
            clean &= p.undo();
            answers[p.answer].1 = Err(StoreError::Io(io::Error::other(format!(
                "index update failed: {e}"
            ))));
        }
        if sync {
            for (dir, e) in sync_dirs(placed.iter().map(|p| &p.path)) {
                warn!(dir = %dir.display(), error = %e, "directory fsync after taking refused files back failed");
                clean = false;
            }
        }
    } else {
        for p in placed {
            remove_backup(p.backup);
        }
    }
    if answers.len() > 1 {
        debug!(instances = answers.len(), "group commit");
    }
    for (tx, result) in answers {
        // A member whose thread is gone has nobody to tell.
        let _ = tx.send(Turn::Done(result));
    }
    clean
}

/// Drops the link to a replaced file once it is no longer needed (a leftover is removed
/// with the rest of `tmp/` at the next start).
fn remove_backup(backup: Option<PathBuf>) {
    if let Some(b) = backup {
        let _ = fs::remove_file(b);
    }
}
