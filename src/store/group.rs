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
use std::sync::mpsc::{self, SyncSender};
use std::sync::{Mutex, MutexGuard};

use tracing::{debug, warn};

use super::StoreError;
use super::index::{Index, NewRow};

/// A checked instance whose temp file is complete, waiting to be made durable under `path`.
pub(super) struct Pending {
    pub temp: tempfile::NamedTempFile,
    pub path: PathBuf,
    pub row: NewRow,
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
        write_out(batch, sync, index);
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

/// Commits one batch and answers each member.
fn write_out(batch: Vec<(Pending, SyncSender<Turn>)>, sync: bool, index: &Index) {
    let mut answers: Vec<(SyncSender<Turn>, Result<(), StoreError>)> = Vec::new();
    // Files renamed into place, with the index of their answer.
    let mut placed: Vec<(usize, PathBuf, NewRow)> = Vec::new();
    for (pending, tx) in batch {
        let Pending { temp, path, row } = pending;
        let result = temp.persist(&path).map(|_| ()).map_err(|e| e.error.into());
        if result.is_ok() {
            placed.push((answers.len(), path, row));
        }
        answers.push((tx, result));
    }

    if sync {
        let dirs: BTreeSet<PathBuf> = placed
            .iter()
            .filter_map(|(_, path, _)| path.parent().map(|d| d.to_path_buf()))
            .collect();
        for dir in dirs {
            if let Err(e) = File::open(&dir).and_then(|d| d.sync_all()) {
                warn!(dir = %dir.display(), error = %e, "directory fsync failed; the instances renamed into it are refused");
                // Not durable, so not acknowledged: take the files back so that a re-send
                // is written again rather than found and taken for a duplicate.
                let (failed, kept): (Vec<_>, Vec<_>) = placed
                    .into_iter()
                    .partition(|(_, path, _)| path.parent() == Some(dir.as_path()));
                placed = kept;
                for (i, path, _) in failed {
                    let _ = fs::remove_file(&path);
                    answers[i].1 = Err(shared(&e, "directory fsync failed"));
                }
            }
        }
    }

    if let Err(e) = index.upsert_all(placed.iter().map(|(_, _, row)| row)) {
        // The files are durable and the next start indexes them; the sender is told to
        // retry, and the re-send is recognised as a duplicate and indexed then.
        for (i, _, _) in &placed {
            answers[*i].1 = Err(StoreError::Io(io::Error::other(format!(
                "index update failed: {e}"
            ))));
        }
    }
    if answers.len() > 1 {
        debug!(instances = answers.len(), "group commit");
    }
    for (tx, result) in answers {
        // A member whose thread is gone has nobody to tell.
        let _ = tx.send(Turn::Done(result));
    }
}
