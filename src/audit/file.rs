//! The local audit file: opened 0600 with O_APPEND, written by one thread from a bounded queue.
//!
//! A thread rather than a task: the file is the record of reference and its writes and fsyncs
//! block; keeping them off the runtime means a slow disk delays the audit trail, not the
//! associations that produce it.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::mpsc::{Receiver, Sender};

use super::AuditError;

/// What the writer thread is asked to do, in order.
pub(super) enum FileMsg {
    /// One message, already ending in `\n`.
    Line(String),
    /// Write what is queued before it, fsync, and answer.
    Flush(Sender<io::Result<()>>),
    /// Tests: say so on the first sender, then block until the second channel yields or closes.
    #[cfg(test)]
    Block(Sender<()>, Receiver<()>),
}

/// Most lines written with one `write` (a batch is what the queue held when the thread woke).
const BATCH_LINES: usize = 1024;

/// Opens (creating it and its directories) the audit file for appending. New directories are
/// 0700 and a new file 0600; an existing file with looser permissions is tightened to 0600 with
/// a warning, since it holds PHI.
pub(super) fn open(path: &Path) -> Result<File, AuditError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| AuditError::CreateDir {
                path: dir.to_path_buf(),
                source,
            })?;
    }
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| AuditError::Open {
            path: path.to_path_buf(),
            source,
        })?;
    let meta = file.metadata().map_err(|source| AuditError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o177 != 0 {
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(|source| AuditError::Permissions {
                path: path.to_path_buf(),
                source,
            })?;
        tracing::warn!(
            path = %path.display(),
            was = format!("{mode:04o}"),
            "audit file had permissions looser than 0600 (it holds patient identifiers); tightened to 0600"
        );
    }
    Ok(file)
}

/// The writer thread's loop: ends when every sender is gone and the queue is drained.
pub(super) fn run(mut file: File, rx: Receiver<FileMsg>, path: String) {
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut failures: u64 = 0;
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        let mut lines = 0;
        while let Some(msg) = next.take() {
            match msg {
                FileMsg::Line(line) => {
                    buf.extend_from_slice(line.as_bytes());
                    lines += 1;
                }
                FileMsg::Flush(reply) => {
                    let result = write(&mut file, &mut buf).and_then(|()| file.sync_all());
                    if let Err(e) = &result {
                        tracing::error!(path, error = %e, "audit file: flush failed");
                    }
                    let _ = reply.send(result);
                }
                #[cfg(test)]
                FileMsg::Block(blocked, gate) => {
                    let _ = blocked.send(());
                    let _ = gate.recv();
                }
            }
            if lines < BATCH_LINES {
                next = rx.try_recv().ok();
            }
        }
        if let Err(e) = write(&mut file, &mut buf) {
            failures += 1;
            // Every failure is counted; the log gets the first and then one in a thousand.
            if failures == 1 || failures.is_multiple_of(1000) {
                tracing::error!(path, error = %e, failures, "audit file: write failed; messages lost");
            }
        }
    }
}

/// Writes and empties `buf` (emptied on failure too: a message is lost rather than repeated).
fn write(file: &mut File, buf: &mut Vec<u8>) -> io::Result<()> {
    if buf.is_empty() {
        return Ok(());
    }
    let result = file.write_all(buf);
    buf.clear();
    result
}
