//! Durable storage of received instances: the on-disk layout, the durability protocol and
//! the index.
//!
//! Layout: `<root>/<StudyUID>/<SeriesUID>/<SOPInstanceUID>.dcm` (Part 10 files, stored in the
//! transfer syntax they arrived in), `<root>/index.sqlite`, `<root>/tmp/` for files being
//! received.
//!
//! The protocol behind "a success status means the instance is on disk": a received data set
//! is streamed into a temp file in `tmp/` (same file system, so the final rename is atomic),
//! walked once to prove it is complete and to read its UIDs ([`header`]), fsynced, renamed to
//! its final name, its directory fsynced, and indexed — and only then does the caller answer
//! success. A crash at any point leaves either nothing or a temp file, which the next start
//! removes. Concurrent associations share the renames, directory fsyncs and index transaction
//! of instances that finish together (`group.rs`). This module does not decode pixels and
//! knows nothing about the network.

pub mod charset;
mod group;
pub mod header;
pub mod uid;

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tracing::{debug, info, warn};

/// The index under the names the store used before [`crate::db`] owned it.
pub use crate::db::{Db as Index, DbError as IndexError, InstanceRow, NewRow};
use header::{Encoding, Header, HeaderError};

/// What the store needs of `[node]`: where it lives and how careful it is.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreSettings {
    /// Storage root (`node.storage`).
    pub storage: PathBuf,
    /// fsync every instance before acknowledging it (`node.sync`).
    pub sync: bool,
    /// Refuse stores below this much free space, in MB (`node.min_free_mb`).
    pub min_free_mb: u64,
    /// A different instance under a stored SOP Instance UID (`node.on_conflict`).
    pub on_conflict: OnConflict,
    /// A PostgreSQL index shared with other processes (`[index] url`); `None`: the embedded
    /// SQLite index, and this process alone on the storage.
    pub shared: Option<SharedIndex>,
}

/// How a process joins a storage it shares with others through a PostgreSQL index.
#[derive(Debug, Clone, PartialEq)]
pub struct SharedIndex {
    /// `[index] url` (may hold a password: never logged).
    pub url: String,
    /// `[index] pool`.
    pub pool: usize,
    /// This process's name (`[index] instance`): its lock file and its temp directory.
    pub instance: String,
}

impl StoreSettings {
    /// Settings for a store under `storage` with the node's defaults otherwise.
    pub fn at(storage: impl Into<PathBuf>) -> StoreSettings {
        StoreSettings {
            storage: storage.into(),
            sync: true,
            min_free_mb: 1024,
            on_conflict: OnConflict::KeepFirst,
            shared: None,
        }
    }
}

/// What to do when an instance arrives whose SOP Instance UID is already stored with
/// different content. Identical re-sends are always acknowledged without rewriting.
#[derive(Debug, Clone, Copy, Default, serde::Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum OnConflict {
    /// Keep the stored instance, answer success and log a warning: a sender that is refused
    /// tends to retry forever, and the first version is what downstream jobs already used.
    #[default]
    KeepFirst,
    /// Replace the stored instance with the new one (modality re-sends after correction).
    Replace,
    /// Refuse the new one (status 0xA900 with an Error Comment naming the UID).
    Reject,
}

/// Our Implementation Class UID (a fixed UUID-derived UID under 2.25).
pub const IMPLEMENTATION_CLASS_UID: &str = "2.25.208962186301944432614089305626476003171";
/// Our Implementation Version Name (at most 16 characters).
pub const IMPLEMENTATION_VERSION_NAME: &str = concat!("M3DNODE_", env!("CARGO_PKG_VERSION"));

/// Why an instance was not stored. The network layer maps each to a DIMSE status.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Free space is below `node.min_free_mb` (status 0xA700).
    #[error("storage volume has {free_mb} MB free, below the {min_mb} MB watermark")]
    LowDiskSpace {
        /// Free megabytes now.
        free_mb: u64,
        /// The configured watermark.
        min_mb: u64,
    },
    /// Writing or syncing failed, e.g. the disk filled up mid-instance (status 0xA700).
    #[error("writing to storage failed: {0}")]
    Io(#[from] io::Error),
    /// The data set could not be parsed (status 0xC000).
    #[error("{0}")]
    Unreadable(#[from] HeaderError),
    /// The data set contradicts its command or carries an unusable UID (status 0xA900).
    #[error("{0}")]
    Mismatch(String),
    /// A different instance is stored under this SOP Instance UID and `on_conflict = reject`
    /// (status 0xA900).
    #[error("a different instance with SOP Instance UID {0} is already stored")]
    Conflict(String),
    /// The index could not be updated (status 0xA700).
    #[error(transparent)]
    Index(#[from] IndexError),
}

/// Why the store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Another process holds the storage root's lock file: two nodes on one storage would
    /// delete each other's temp files at start and race on the index.
    #[error(
        "storage root `{}` is in use by another m3dnode{} (lock file {}); stop it or give this node another node.storage",
        root.display(),
        pid.map(|p| format!(" (PID {p})")).unwrap_or_default(),
        LOCK_FILE
    )]
    Locked {
        /// The storage root.
        root: PathBuf,
        /// The PID the holder wrote into the lock file, when readable.
        pid: Option<u32>,
    },
    /// Another process on this shared storage runs under the same `[index] instance`: the
    /// two would empty each other's temp directory.
    #[error(
        "another m3dnode{} runs as instance `{instance}` on storage `{}` (lock file {}); give each process its own [index] instance",
        pid.map(|p| format!(" (PID {p})")).unwrap_or_default(),
        root.display(),
        lock.display()
    )]
    InstanceInUse {
        /// `[index] instance`.
        instance: String,
        /// The storage root.
        root: PathBuf,
        /// The lock file.
        lock: PathBuf,
        /// The PID the holder wrote into the lock file, when readable.
        pid: Option<u32>,
    },
    /// Creating, cleaning or repairing the storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The lock file under the storage root, held (advisory `flock`) by the serving process for
/// as long as it lives, with its PID inside for the operator.
pub const LOCK_FILE: &str = "m3dnode.lock";

/// The index database, under the storage root.
pub const INDEX_FILE: &str = "index.sqlite";

/// What the command set announced for the data set being received.
#[derive(Debug, Clone)]
pub struct Announced {
    /// Affected SOP Class UID of the C-STORE-RQ.
    pub sop_class_uid: String,
    /// Affected SOP Instance UID of the C-STORE-RQ.
    pub sop_instance_uid: String,
    /// Negotiated transfer syntax of the presentation context.
    pub transfer_syntax: String,
    /// Calling AE title (recorded in the file meta and the index).
    pub calling_ae: String,
}

/// The outcome of a successful store.
#[derive(Debug, Clone)]
pub struct Stored {
    /// The data set's header.
    pub header: Header,
    /// Final path.
    pub path: PathBuf,
    /// File size in bytes.
    pub size: u64,
    /// The same instance was already stored; nothing was rewritten.
    pub duplicate: bool,
}

/// The storage root: layout, durability and the index.
pub struct Store {
    /// The open lock file: the advisory lock lasts as long as this descriptor, so for the
    /// life of the store (the serving process).
    _lock: File,
    root: PathBuf,
    tmp: PathBuf,
    index: Index,
    group: group::GroupCommit,
    /// Instances being received or committed right now, on all associations.
    receiving: Arc<AtomicUsize>,
    sync: bool,
    min_free_bytes: u64,
    on_conflict: OnConflict,
    /// On a storage shared through a PostgreSQL index ([`StoreSettings::shared`]).
    shared: bool,
}

impl Store {
    /// Opens the store under `cfg.storage`, creating it if needed, removing temp files left by
    /// a crash, and re-indexing instances whose rows a power cut may have lost.
    ///
    /// The storage root is locked first ([`LOCK_FILE`]): a second node on the same root would
    /// otherwise delete the running node's temp files (instances being received) and repair
    /// an index that is being written. Only `serve` opens a `Store`; `m3dnode jobs` and
    /// `m3dnode retry` open the index alone and are meant to run beside the node (SQLite
    /// serialises their few writes), so they take no lock.
    ///
    /// On a storage shared through a PostgreSQL index ([`StoreSettings::shared`]) each process
    /// locks `processes/<instance>.lock` and receives into `tmp/<instance>/` instead, and
    /// nothing is re-indexed at start: a PostgreSQL commit is durable, so a file without a row
    /// was never acknowledged, and a walk of a shared tree at every start would be far too slow.
    pub fn open(cfg: &StoreSettings) -> Result<Store, OpenError> {
        let root = cfg.storage.clone();
        fs::create_dir_all(&root).map_err(StoreError::from)?;
        let (lock, tmp) = match &cfg.shared {
            None => (lock_root(&root)?, root.join("tmp")),
            Some(shared) => {
                let dir = root.join("processes");
                fs::create_dir_all(&dir).map_err(StoreError::from)?;
                let path = dir.join(format!("{}.lock", shared.instance));
                let lock = lock_file(&path).map_err(|e| match e {
                    OpenError::Locked { pid, .. } => OpenError::InstanceInUse {
                        instance: shared.instance.clone(),
                        root: root.clone(),
                        lock: path.clone(),
                        pid,
                    },
                    other => other,
                })?;
                (lock, root.join("tmp").join(&shared.instance))
            }
        };
        Ok(Store::open_locked(cfg, root, tmp, lock)?)
    }

    /// [`Store::open`] once the root (or this process's place in a shared one) is locked.
    fn open_locked(
        cfg: &StoreSettings,
        root: PathBuf,
        tmp: PathBuf,
        lock: File,
    ) -> Result<Store, StoreError> {
        fs::create_dir_all(&tmp)?;
        let mut removed = 0;
        for entry in fs::read_dir(&tmp)? {
            let entry = entry?;
            fs::remove_file(entry.path())?;
            removed += 1;
        }
        if removed > 0 {
            warn!(
                removed,
                "removed incomplete temp files left by an interrupted run"
            );
        }
        let index = match &cfg.shared {
            None => Index::open(&root.join(INDEX_FILE))?,
            Some(shared) => Index::open_postgres(
                &shared.url,
                &format!("m3dnode/{}", shared.instance),
                shared.pool,
            )?,
        };
        let shared = cfg.shared.is_some();
        let store = Store {
            _lock: lock,
            root,
            tmp,
            index,
            group: group::GroupCommit::default(),
            receiving: Arc::default(),
            sync: cfg.sync,
            min_free_bytes: cfg.min_free_mb.saturating_mul(1024 * 1024),
            on_conflict: cfg.on_conflict,
            shared,
        };
        if !shared {
            store.reconcile()?;
        }
        Ok(store)
    }

    /// Group commits so far and the instances in them: (batches, instances).
    pub fn commit_counts(&self) -> (u64, u64) {
        self.group.counts()
    }

    /// Whether commits fsync (`node.sync`); without it a commit never waits for the disk.
    pub fn syncs(&self) -> bool {
        self.sync
    }

    /// The index file, for readers beside the node's own connection (the metrics).
    pub fn index_path(&self) -> PathBuf {
        self.root.join(INDEX_FILE)
    }

    /// Whether the storage is shared with other processes through a PostgreSQL index.
    pub fn is_shared(&self) -> bool {
        self.shared
    }

    /// The storage root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The index.
    pub fn index(&self) -> &Index {
        &self.index
    }

    /// Indexes any stored file that has no row. Rows are committed before acknowledgement, so
    /// after a process crash there is nothing to do; after a power cut the last rows may be
    /// missing while their (fsynced) files are not.
    fn reconcile(&self) -> Result<(), StoreError> {
        let marker = self.root.join("clean-shutdown");
        if marker.exists() {
            fs::remove_file(&marker)?;
            return Ok(());
        }
        let mut added = 0u64;
        for study in read_dirs(&self.root)? {
            if study
                .file_name()
                .is_some_and(|n| n == "tmp" || n == "audit" || n == "processes")
            {
                continue;
            }
            for series in read_dirs(&study)? {
                for entry in fs::read_dir(&series)? {
                    let path = entry?.path();
                    let Some(uid) = path
                        .file_name()
                        .and_then(|n| n.to_str())
                        .and_then(|n| n.strip_suffix(".dcm"))
                    else {
                        continue;
                    };
                    if self.index.has_instance(uid)? {
                        continue;
                    }
                    match read_part10_header(&path) {
                        Ok((header, ts, size)) => {
                            let rel = self.relative(&path);
                            self.index.upsert(&header, &ts, &rel, size, "")?;
                            added += 1;
                        }
                        Err(e) => {
                            warn!(path = %path.display(), error = %e, "unindexed file is unreadable; left in place")
                        }
                    }
                }
            }
        }
        if added > 0 {
            info!(added, "re-indexed instances missing from the index");
        }
        Ok(())
    }

    /// Records a clean shutdown so that the next start can skip reconciliation, unless a
    /// refused instance's file could not be taken back out of the tree this run: then the
    /// next start repairs the index whatever the stop was like.
    pub fn mark_clean_shutdown(&self) -> Result<(), StoreError> {
        if self.shared {
            // Nothing is re-indexed at the start of a shared storage's process.
            return Ok(());
        }
        if self.group.needs_repair() {
            warn!("files without an index row may remain; the next start re-indexes the storage");
            return Ok(());
        }
        File::create(self.root.join("clean-shutdown"))?;
        Ok(())
    }

    /// Starts receiving one instance: checks the free-space watermark and opens a temp file
    /// with the Part 10 preamble and file meta already written.
    pub fn begin(
        &self,
        announced: &Announced,
        spare: Option<TempFile>,
    ) -> Result<Incoming, StoreError> {
        if self.min_free_bytes > 0 {
            let free = fs4::available_space(&self.root)?;
            if free < self.min_free_bytes {
                return Err(StoreError::LowDiskSpace {
                    free_mb: free / (1024 * 1024),
                    min_mb: self.min_free_bytes / (1024 * 1024),
                });
            }
        }
        // A spare whose name has gone (tmp/ emptied by hand) could never be renamed.
        let file = match spare {
            Some(TempFile(f)) if f.path().exists() => f,
            _ => self.temp_file()?.0,
        };
        let mut incoming = Incoming {
            // Smaller than a typical P-DATA fragment, so that large fragments go straight to
            // the file and only small ones are gathered.
            writer: BufWriter::with_capacity(64 * 1024, file),
            data_offset: 0,
            announced: announced.clone(),
            early_writeback: self.sync,
            receiving: Receiving::enter(&self.receiving),
            written: 0,
            writeback_from: 0,
            prefix: Vec::new(),
        };
        let meta = file_meta(announced)?;
        incoming.writer.write_all(&[0u8; 128])?;
        incoming.writer.write_all(b"DICM")?;
        incoming.writer.write_all(&meta)?;
        incoming.data_offset = 132 + meta.len() as u64;
        Ok(incoming)
    }

    /// Creates an empty temp file for a later [`Store::begin`]. Creating a file is the
    /// costliest step of starting an instance (ext4 searches for a free inode), so the SCP
    /// makes the next one while the sender is still preparing its next C-STORE.
    pub fn temp_file(&self) -> Result<TempFile, StoreError> {
        let temp = || {
            tempfile::Builder::new()
                .prefix("rx-")
                .suffix(".part")
                .tempfile_in(&self.tmp)
        };
        let file = match temp() {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // Someone removed tmp/ (a clean-up script, an operator): recreate it rather
                // than refuse every instance until a restart.
                warn!(dir = %self.tmp.display(), "temp directory vanished; recreating it");
                fs::create_dir_all(&self.tmp)?;
                temp()?
            }
            other => other?,
        };
        Ok(TempFile(file))
    }

    /// Finishes an instance: checks it, makes it durable and indexes it. Blocking (fsync):
    /// call it off the async runtime.
    pub fn commit(&self, incoming: Incoming) -> Result<Stored, StoreError> {
        self.commit_with(incoming, self.on_conflict)
    }

    fn commit_with(
        &self,
        incoming: Incoming,
        on_conflict: OnConflict,
    ) -> Result<Stored, StoreError> {
        let Incoming {
            writer,
            data_offset,
            announced,
            written,
            prefix,
            ..
        } = incoming;
        let temp = writer.into_inner().map_err(|e| e.into_error())?;
        let size = data_offset + written;
        let header = header::scan_file(
            Prefixed {
                prefix: &prefix,
                file: temp.as_file(),
                base: data_offset,
                len: written,
                pos: 0,
            },
            written,
            Encoding::of_transfer_syntax(&announced.transfer_syntax),
        )?;
        check_against_command(&header, &announced)?;

        let dir = self
            .root
            .join(&header.study_instance_uid)
            .join(&header.series_instance_uid);
        let path = dir.join(format!("{}.dcm", header.sop_instance_uid));
        let exists = path.exists();
        if exists {
            if same_data_set(&path, temp.path(), data_offset)? {
                debug!(sop_instance_uid = %header.sop_instance_uid, "identical instance received again");
                self.index.upsert(
                    &header,
                    &announced.transfer_syntax,
                    &self.relative(&path),
                    fs::metadata(&path)?.len(),
                    &announced.calling_ae,
                )?;
                return Ok(Stored {
                    header,
                    path,
                    size,
                    duplicate: true,
                });
            }
            match on_conflict {
                OnConflict::Reject => return Err(StoreError::Conflict(header.sop_instance_uid)),
                OnConflict::KeepFirst => {
                    warn!(sop_instance_uid = %header.sop_instance_uid, "a different instance under a stored SOP Instance UID was received; keeping the first (node.on_conflict = keep-first)");
                    return Ok(Stored {
                        header,
                        path,
                        size,
                        duplicate: true,
                    });
                }
                OnConflict::Replace => {
                    warn!(sop_instance_uid = %header.sop_instance_uid, "replacing a stored instance with a different one under the same SOP Instance UID (node.on_conflict = replace)");
                }
            }
        }
        // The file being replaced stays reachable until the new one is indexed, so that a
        // refused commit can put it back (group.rs).
        let backup = if exists {
            let backup = self.tmp.join(format!(
                "replaced-{}.dcm",
                BACKUPS.fetch_add(1, Ordering::Relaxed)
            ));
            fs::hard_link(&path, &backup)?;
            Some(backup)
        } else {
            None
        };
        self.create_dirs(&dir)?;
        if self.sync {
            // Each thread flushes its own file, so the flushes of concurrent instances are in
            // the disk's queue together; only the steps they can share are grouped.
            let flush = std::time::Instant::now();
            temp.as_file().sync_data()?;
            crate::metrics::fsync_file(flush.elapsed());
        }
        let pending = group::Pending {
            temp,
            row: NewRow {
                header: header.clone(),
                transfer_syntax: announced.transfer_syntax,
                path: self.relative(&path),
                size,
                calling_ae: announced.calling_ae,
            },
            path: path.clone(),
            backup,
        };
        self.group.commit(pending, self.sync, &self.index)?;
        Ok(Stored {
            header,
            path,
            size,
            duplicate: false,
        })
    }

    /// Stores an object the node made itself (a result) through the same durable path as a
    /// received one. A result re-made after a crash carries the same SOP Instance UID and
    /// replaces the earlier file.
    pub fn store_object(
        &self,
        obj: &dicom_object::DefaultDicomObject,
        source_ae: &str,
    ) -> Result<Stored, StoreError> {
        use dicom_encoding::transfer_syntax::TransferSyntaxIndex;
        let meta = obj.meta();
        let trim = |s: &str| s.trim_end_matches(['\0', ' ']).to_string();
        let announced = Announced {
            sop_class_uid: trim(meta.media_storage_sop_class_uid()),
            sop_instance_uid: trim(meta.media_storage_sop_instance_uid()),
            transfer_syntax: trim(meta.transfer_syntax()),
            calling_ae: source_ae.to_string(),
        };
        let ts = dicom_transfer_syntax_registry::TransferSyntaxRegistry
            .get(&announced.transfer_syntax)
            .ok_or_else(|| {
                StoreError::Mismatch(format!(
                    "unknown transfer syntax {}",
                    announced.transfer_syntax
                ))
            })?;
        let mut incoming = self.begin(&announced, None)?;
        obj.write_dataset_with_ts(&mut incoming, ts)
            .map_err(|e| StoreError::Mismatch(format!("cannot encode the result: {e}")))?;
        self.commit_with(incoming, OnConflict::Replace)
    }

    /// Deletes a stored instance (file and index row); used when an aborted association's
    /// instances are dropped by configuration. Unknown UIDs are ignored.
    pub fn delete_instance(&self, sop_instance_uid: &str) -> Result<(), StoreError> {
        if let Some(row) = self.index.get(sop_instance_uid)? {
            match fs::remove_file(self.root.join(&row.path)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
            self.index.delete_instance(sop_instance_uid)?;
        }
        Ok(())
    }

    /// Creates the study/series directories, fsyncing each parent that gained an entry, so
    /// that the directory chain of a durable file is durable too.
    fn create_dirs(&self, dir: &Path) -> Result<(), StoreError> {
        if dir.is_dir() {
            return Ok(());
        }
        let mut missing = Vec::new();
        let mut d = dir;
        while !d.is_dir() {
            missing.push(d.to_path_buf());
            match d.parent() {
                Some(p) => d = p,
                None => break,
            }
        }
        for m in missing.iter().rev() {
            match fs::create_dir(m) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e.into()),
            }
            if self.sync
                && let Some(parent) = m.parent()
            {
                File::open(parent)?.sync_all()?;
            }
        }
        Ok(())
    }

    fn relative(&self, path: &Path) -> String {
        path.strip_prefix(&self.root)
            .unwrap_or(path)
            .to_string_lossy()
            .into_owned()
    }
}

/// An empty temp file in the store's `tmp/`, made ahead of time by [`Store::temp_file`].
/// Dropping it removes it.
pub struct TempFile(tempfile::NamedTempFile);

/// An instance being received into a temp file. Dropping it without [`Store::commit`]
/// deletes the temp file: nothing partial is left behind.
pub struct Incoming {
    writer: BufWriter<tempfile::NamedTempFile>,
    data_offset: u64,
    announced: Announced,
    /// Start writing pages to disk while the rest is still arriving (durable mode only).
    early_writeback: bool,
    /// Counts this instance among those in flight until it is committed or dropped.
    receiving: Receiving,
    /// Bytes of the data set written so far.
    written: u64,
    /// File offset up to which writeback has been started.
    writeback_from: u64,
    /// The first [`PREFIX_LEN`] bytes of the data set, kept so that the header walk at commit
    /// reads them from memory instead of from the file.
    prefix: Vec<u8>,
}

/// Numbers the links to replaced files in `tmp/` (one process per storage root: the lock).
static BACKUPS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How much of each data set [`Incoming`] keeps in memory: enough for the attributes before
/// the pixel data of any ordinary image.
const PREFIX_LEN: usize = 64 * 1024;

/// Writeback is started in steps of this many bytes: large enough to be one efficient disk
/// request, small enough that a 512 KB slice gets a head start.
const WRITEBACK_STEP: u64 = 128 * 1024;

impl Incoming {
    /// Appends a fragment of the data set as received.
    pub fn append(&mut self, fragment: &[u8]) -> io::Result<()> {
        if self.prefix.len() < PREFIX_LEN {
            let take = fragment.len().min(PREFIX_LEN - self.prefix.len());
            self.prefix.extend_from_slice(&fragment[..take]);
        }
        self.writer.write_all(fragment)?;
        self.written += fragment.len() as u64;
        // Early writeback hides the fsync of a lone sender, which waits for each answer.
        // When several instances arrive at once, their transfers already overlap each
        // other's fsyncs, and the disk does better with one large write per file than with
        // many small ones.
        if self.early_writeback && self.receiving.alone() {
            // What has left the BufWriter is in the page cache: ask the kernel to start
            // writing it now, so that the fsync before the success status waits only for the
            // tail. This overlaps disk writes with receiving instead of serialising them.
            let in_file = self.data_offset + self.written - self.writer.buffer().len() as u64;
            if in_file >= self.writeback_from + WRITEBACK_STEP {
                start_writeback(
                    self.writer.get_ref().as_file(),
                    self.writeback_from,
                    in_file - self.writeback_from,
                );
                self.writeback_from = in_file;
            }
        }
        Ok(())
    }
}

/// Counts an instance as being received for as long as it lives.
struct Receiving(Arc<AtomicUsize>);

impl Receiving {
    fn enter(count: &Arc<AtomicUsize>) -> Receiving {
        count.fetch_add(1, Ordering::Relaxed);
        Receiving(Arc::clone(count))
    }

    fn alone(&self) -> bool {
        self.0.load(Ordering::Relaxed) == 1
    }
}

impl Drop for Receiving {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Lets an encoder write a whole data set through the same bookkeeping as received
/// fragments.
impl Write for Incoming {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.append(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.writer.flush()
    }
}

/// Starts asynchronous writeback of a file range (Linux `sync_file_range` with
/// `SYNC_FILE_RANGE_WRITE`). Purely a performance hint: durability still comes from the
/// `fdatasync` in [`Store::commit`], so errors are ignored.
#[cfg(target_os = "linux")]
fn start_writeback(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return;
    };
    // SAFETY: the descriptor is valid for the lifetime of `file`; sync_file_range only reads
    // its arguments and touches no memory of ours.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE);
    }
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_file: &File, _offset: u64, _len: u64) {}

/// The data set in a temp file as the header walker reads it: the first bytes from memory,
/// the rest (rarely needed: the walker seeks over pixel data) by positioned reads.
struct Prefixed<'a> {
    prefix: &'a [u8],
    file: &'a File,
    /// Offset of the data set in the file.
    base: u64,
    /// Length of the data set.
    len: u64,
    pos: u64,
}

impl Read for Prefixed<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = if let Some(rest) = self
            .prefix
            .get(self.pos as usize..)
            .filter(|r| !r.is_empty())
        {
            let n = rest.len().min(buf.len());
            buf[..n].copy_from_slice(&rest[..n]);
            n
        } else {
            let want = (self.len.saturating_sub(self.pos)).min(buf.len() as u64) as usize;
            if want == 0 {
                return Ok(0);
            }
            read_at(self.file, &mut buf[..want], self.base + self.pos)?
        };
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for Prefixed<'_> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let target = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = target.ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "seek before the data set")
        })?;
        Ok(self.pos)
    }
}

#[cfg(unix)]
fn read_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    std::os::unix::fs::FileExt::read_at(file, buf, offset)
}

#[cfg(not(unix))]
fn read_at(mut file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    file.seek(SeekFrom::Start(offset))?;
    file.read(buf)
}

/// Takes the storage root's advisory lock, or names the process that holds it. The lock is
/// an `flock` on [`LOCK_FILE`], so it goes with the process however it ends (no stale lock
/// after `kill -9`); the PID written into the file is only information for the message.
/// Also taken by `m3dnode bench qr-load`, which writes an index as `serve` would.
pub(crate) fn lock_root(root: &Path) -> Result<File, OpenError> {
    lock_file(&root.join(LOCK_FILE))
}

/// [`lock_root`] on any lock file path.
fn lock_file(path: &Path) -> Result<File, OpenError> {
    let root = path.parent().unwrap_or(Path::new("."));
    let io = |e: io::Error| OpenError::Store(e.into());
    let mut file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(io)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => {
            let mut text = String::new();
            let pid = file
                .read_to_string(&mut text)
                .ok()
                .and_then(|_| text.trim().parse().ok());
            return Err(OpenError::Locked {
                root: root.to_path_buf(),
                pid,
            });
        }
        Err(fs::TryLockError::Error(e)) => return Err(io(e)),
    }
    file.set_len(0).map_err(io)?;
    writeln!(file, "{}", std::process::id()).map_err(io)?;
    Ok(file)
}

fn read_dirs(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            out.push(entry.path());
        }
    }
    Ok(out)
}

/// Encodes the file meta group (group 0002) for an instance announced by a C-STORE-RQ.
fn file_meta(announced: &Announced) -> Result<Vec<u8>, StoreError> {
    let meta = dicom_object::FileMetaTableBuilder::new()
        .media_storage_sop_class_uid(announced.sop_class_uid.as_str())
        .media_storage_sop_instance_uid(announced.sop_instance_uid.as_str())
        .transfer_syntax(announced.transfer_syntax.as_str())
        .implementation_class_uid(IMPLEMENTATION_CLASS_UID)
        .implementation_version_name(IMPLEMENTATION_VERSION_NAME)
        .source_application_entity_title(announced.calling_ae.as_str())
        .build()
        .map_err(|e| StoreError::Mismatch(format!("cannot build file meta information: {e}")))?;
    let mut out = Vec::with_capacity(256);
    meta.write(&mut out)
        .map_err(|e| StoreError::Mismatch(format!("cannot encode file meta information: {e}")))?;
    Ok(out)
}

/// The command and the data set must agree, and the UIDs that become path components must be
/// UIDs.
fn check_against_command(header: &Header, announced: &Announced) -> Result<(), StoreError> {
    if header.sop_class_uid != announced.sop_class_uid.trim_end_matches('\0') {
        return Err(StoreError::Mismatch(format!(
            "data set SOP Class UID differs from the C-STORE-RQ: {} vs {}",
            header.sop_class_uid, announced.sop_class_uid
        )));
    }
    if header.sop_instance_uid != announced.sop_instance_uid.trim_end_matches('\0') {
        return Err(StoreError::Mismatch(format!(
            "data set SOP Instance UID differs from the C-STORE-RQ: {} vs {}",
            header.sop_instance_uid, announced.sop_instance_uid
        )));
    }
    for (name, uid) in [
        ("SOP Instance UID", &header.sop_instance_uid),
        ("Study Instance UID", &header.study_instance_uid),
        ("Series Instance UID", &header.series_instance_uid),
    ] {
        if !uid::is_valid_uid(uid) {
            return Err(StoreError::Mismatch(format!(
                "{name} is not a valid UID: {uid:?}"
            )));
        }
    }
    Ok(())
}

/// True when the data set part of `stored` (after its own meta) equals that of `temp` after
/// `temp_offset`.
fn same_data_set(stored: &Path, temp: &Path, temp_offset: u64) -> Result<bool, StoreError> {
    let mut a = io::BufReader::new(File::open(stored)?);
    let stored_offset = part10_data_offset(&mut a)?;
    a.seek(SeekFrom::Start(stored_offset))?;
    let mut b = io::BufReader::new(File::open(temp)?);
    b.seek(SeekFrom::Start(temp_offset))?;
    let (mut ba, mut bb) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
    loop {
        let na = read_full(&mut a, &mut ba)?;
        let nb = read_full(&mut b, &mut bb)?;
        if na != nb || ba[..na] != bb[..nb] {
            return Ok(false);
        }
        if na == 0 {
            return Ok(true);
        }
    }
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Offset of the data set in a Part 10 file: 132 + 12 + the File Meta Information Group
/// Length value.
pub fn part10_data_offset(r: &mut (impl Read + Seek)) -> io::Result<u64> {
    r.seek(SeekFrom::Start(128))?;
    let mut head = [0u8; 16];
    r.read_exact(&mut head)?;
    if &head[0..4] != b"DICM" || head[4..8] != [2, 0, 0, 0] || &head[8..10] != b"UL" {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a Part 10 file",
        ));
    }
    let group_len = u32::from_le_bytes([head[12], head[13], head[14], head[15]]);
    Ok(144 + group_len as u64)
}

/// Reads the header of a stored Part 10 file (for reconciliation).
pub fn read_part10_header(path: &Path) -> Result<(Header, String, u64), StoreError> {
    let mut file = File::open(path)?;
    let size = file.metadata()?.len();
    let offset = part10_data_offset(&mut file)?;
    let meta = dicom_object::OpenFileOptions::new()
        .read_until(dicom_dictionary_std::tags::SOP_CLASS_UID)
        .open_file(path)
        .map_err(|e| StoreError::Mismatch(format!("{}: {e}", path.display())))?;
    let ts = meta
        .meta()
        .transfer_syntax()
        .trim_end_matches('\0')
        .to_string();
    file.seek(SeekFrom::Start(offset))?;
    let header = header::scan_file(&mut file, size - offset, Encoding::of_transfer_syntax(&ts))?;
    Ok((header, ts, size))
}

#[cfg(test)]
mod tests {
    use super::*;
    use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
    use dicom_dictionary_std::tags;
    use dicom_object::InMemDicomObject;

    const MR: &str = "1.2.840.10008.5.1.4.1.1.4";

    /// A data set whose last element lies far beyond the in-memory prefix, so the header walk
    /// must cross from memory to the file.
    fn data_set(sop: &str) -> Vec<u8> {
        let mut obj = uid_object(sop, "1.2.3", "1.2.3.4");
        obj.put(DataElement::new(
            tags::PIXEL_DATA,
            VR::OB,
            PrimitiveValue::U8(vec![7u8; 200_000].into()),
        ));
        obj.put(DataElement::new(
            Tag(0xFFFC, 0xFFFC),
            VR::OB,
            PrimitiveValue::U8(vec![0u8; 10].into()),
        ));
        explicit_le(&obj)
    }

    /// An MR object with its four UIDs.
    fn uid_object(sop: &str, study: &str, series: &str) -> InMemDicomObject {
        let mut obj = InMemDicomObject::new_empty();
        let mut ui = |tag, v: &str| obj.put(DataElement::new(tag, VR::UI, PrimitiveValue::from(v)));
        ui(tags::SOP_CLASS_UID, MR);
        ui(tags::SOP_INSTANCE_UID, sop);
        ui(tags::STUDY_INSTANCE_UID, study);
        ui(tags::SERIES_INSTANCE_UID, series);
        obj
    }

    fn explicit_le(obj: &InMemDicomObject) -> Vec<u8> {
        let mut out = Vec::new();
        obj.write_dataset_with_ts(
            &mut out,
            &dicom_transfer_syntax_registry::entries::EXPLICIT_VR_LITTLE_ENDIAN.erased(),
        )
        .unwrap();
        out
    }

    fn store(dir: &Path) -> Store {
        let cfg = StoreSettings {
            min_free_mb: 0,
            sync: false,
            ..StoreSettings::at(dir)
        };
        Store::open(&cfg).unwrap()
    }

    fn receive(store: &Store, sop: &str, bytes: &[u8]) -> Result<Stored, StoreError> {
        store.commit(arrive(store, sop, bytes)?)
    }

    /// An instance received in full and not yet committed.
    fn arrive(store: &Store, sop: &str, bytes: &[u8]) -> Result<Incoming, StoreError> {
        let announced = Announced {
            sop_class_uid: MR.into(),
            sop_instance_uid: sop.into(),
            transfer_syntax: "1.2.840.10008.1.2.1".into(),
            calling_ae: "TEST".into(),
        };
        let mut incoming = store.begin(&announced, Some(store.temp_file()?))?;
        for fragment in bytes.chunks(16_382) {
            incoming.append(fragment)?;
        }
        Ok(incoming)
    }

    fn wait_until(what: &str, cond: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !cond() {
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting: {what}"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    fn syncing_store(dir: &Path) -> Store {
        Store::open(&StoreSettings {
            min_free_mb: 0,
            ..StoreSettings::at(dir)
        })
        .unwrap()
    }

    /// Commits the first of `arrived` alone while the index is held (as a slow disk would
    /// hold it) and lets the rest queue behind it, so that they form one batch; `hold` runs
    /// on the held connection first.
    fn commit_first_alone_then_batch(
        store: &Store,
        mut arrived: Vec<Incoming>,
        on_conflict: OnConflict,
        hold: impl FnOnce(&rusqlite::Connection) -> rusqlite::Result<()>,
    ) -> Vec<Result<Stored, StoreError>> {
        let batches = store.commit_counts().0;
        let behind = arrived.len() - 1;
        std::thread::scope(|s| {
            let mut threads = Vec::new();
            store
                .index()
                .with(|c| {
                    hold(c)?;
                    let first = arrived.remove(0);
                    threads.push(s.spawn(move || store.commit_with(first, on_conflict)));
                    wait_until("the first batch", || store.commit_counts().0 == batches + 1);
                    for incoming in arrived.drain(..) {
                        threads.push(s.spawn(move || store.commit_with(incoming, on_conflict)));
                    }
                    wait_until("the rest queued", || store.group.queued() == behind);
                    Ok(())
                })
                .unwrap();
            threads.into_iter().map(|t| t.join().unwrap()).collect()
        })
    }

    #[test]
    fn instances_arriving_during_a_commit_are_committed_together() {
        let dir = tempfile::tempdir().unwrap();
        let store = syncing_store(dir.path());
        let sops: Vec<String> = (0..5).map(|i| format!("1.2.3.4.{}", 10 + i)).collect();
        let arrived: Vec<Incoming> = sops
            .iter()
            .map(|sop| arrive(&store, sop, &data_set(sop)).unwrap())
            .collect();
        let stored: Vec<Stored> =
            commit_first_alone_then_batch(&store, arrived, store.on_conflict, |_| Ok(()))
                .into_iter()
                .map(|r| r.unwrap())
                .collect();
        // One batch for the first, one for the four that queued behind it.
        assert_eq!(store.commit_counts(), (2, 5));
        assert_eq!(store.index().count().unwrap(), 5);
        for (sop, stored) in sops.iter().zip(&stored) {
            assert_eq!(&stored.header.sop_instance_uid, sop);
            let on_disk = fs::read(&stored.path).unwrap();
            assert!(on_disk.ends_with(&data_set(sop)));
            assert!(store.index().get(sop).unwrap().is_some());
        }
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }

    /// Every `.dcm` file under the series directories of the test data.
    fn files_in_tree(root: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for study in read_dirs(root).unwrap() {
            if study.ends_with("tmp") {
                continue;
            }
            for series in read_dirs(&study).unwrap() {
                out.extend(fs::read_dir(series).unwrap().map(|e| e.unwrap().path()));
            }
        }
        out
    }

    #[test]
    fn a_failed_index_transaction_refuses_and_takes_back_the_whole_batch() {
        let dir = tempfile::tempdir().unwrap();
        let store = syncing_store(dir.path());
        // An instance stored before, which a replacement in the failing batch must not lose.
        let kept = "1.2.3.4.20";
        receive(&store, kept, &data_set(kept)).unwrap();
        let mut different = data_set(kept);
        let last = different.len() - 1;
        different[last] ^= 1;
        let mut arrived = vec![arrive(&store, "1.2.3.4.21", &data_set("1.2.3.4.21")).unwrap()];
        for i in 22..25 {
            let sop = format!("1.2.3.4.{i}");
            arrived.push(arrive(&store, &sop, &data_set(&sop)).unwrap());
        }
        arrived.push(arrive(&store, kept, &different).unwrap());
        // The index refuses every write from now on (as a full disk would).
        let results = commit_first_alone_then_batch(&store, arrived, OnConflict::Replace, |c| {
            c.execute_batch(
                "CREATE TRIGGER refuse BEFORE INSERT ON instances
                 BEGIN SELECT RAISE(ABORT, 'disk full'); END",
            )
        });
        // The earlier instance, a lone one, then a batch of four (one a replacement).
        assert_eq!(store.commit_counts(), (3, 6));
        for r in &results {
            assert!(
                matches!(r, Err(StoreError::Io(e)) if e.to_string().contains("index update failed")),
                "{:?}",
                r.as_ref().map(|s| &s.path)
            );
        }
        // Only the instance stored before remains, with its first content and its row.
        let files = files_in_tree(dir.path());
        assert_eq!(files.len(), 1, "{files:?}");
        assert!(fs::read(&files[0]).unwrap().ends_with(&data_set(kept)));
        assert_eq!(store.index().count().unwrap(), 1);
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
        assert!(!store.group.needs_repair());
    }

    #[test]
    fn a_second_store_on_the_same_root_is_refused_and_touches_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let first = store(dir.path());
        let spare = first.temp_file().unwrap();
        let cfg = StoreSettings::at(dir.path());
        match Store::open(&cfg) {
            Err(OpenError::Locked { root, pid }) => {
                assert_eq!(root, dir.path());
                assert_eq!(pid, Some(std::process::id()));
            }
            other => panic!("second open: {:?}", other.err()),
        }
        assert!(
            spare.0.path().exists(),
            "the first store's temp file was removed"
        );
        drop(first);
        drop(spare);
        Store::open(&cfg).expect("the lock goes with the first store");
    }

    #[test]
    fn header_walk_crosses_from_the_memory_prefix_into_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let bytes = data_set("1.2.3.4.5");
        assert!(bytes.len() > 3 * PREFIX_LEN);
        let stored = receive(&store, "1.2.3.4.5", &bytes).unwrap();
        assert_eq!(stored.header.series_instance_uid, "1.2.3.4");
        let on_disk = fs::read(&stored.path).unwrap();
        assert_eq!(&on_disk[on_disk.len() - bytes.len()..], &bytes[..]);
        assert_eq!(stored.size, on_disk.len() as u64);

        // Cut inside the trailing element, beyond the prefix: refused, nothing left behind.
        let cut = &bytes[..bytes.len() - 4];
        let err = receive(&store, "1.2.3.4.6", cut).unwrap_err();
        assert!(matches!(err, StoreError::Unreadable(_)), "{err}");
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
        assert!(!stored.path.with_file_name("1.2.3.4.6.dcm").exists());
    }

    #[test]
    fn many_threads_committing_at_once_lose_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let store = &store;
        std::thread::scope(|s| {
            for t in 0..8 {
                s.spawn(move || {
                    for i in 0..10 {
                        let sop = format!("1.2.3.4.{}.{i}", 100 + t);
                        receive(store, &sop, &data_set(&sop)).unwrap();
                    }
                });
            }
        });
        let (batches, instances) = store.commit_counts();
        assert_eq!(instances, 80);
        assert!((1..=80).contains(&batches));
        assert_eq!(store.index().count().unwrap(), 80);
        assert_eq!(store.group.queued(), 0);
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
        let series = dir.path().join("1.2.3").join("1.2.3.4");
        assert_eq!(fs::read_dir(series).unwrap().count(), 80);
    }

    /// An instance with query attributes: `text` are (tag, VR, raw bytes) in the instance's
    /// character set.
    fn query_data_set(sop: &str, study: &str, series: &str, text: &[(Tag, VR, &[u8])]) -> Vec<u8> {
        let mut obj = uid_object(sop, study, series);
        for (tag, vr, bytes) in text {
            // ASCII as text (the encoder writes numbers held as bytes as decimal strings),
            // other bytes raw, as the test's character set encodes them.
            let value = match std::str::from_utf8(bytes) {
                Ok(ascii) if bytes.is_ascii() => PrimitiveValue::from(ascii),
                _ => {
                    let mut v = bytes.to_vec();
                    if v.len() % 2 == 1 {
                        v.push(b' ');
                    }
                    PrimitiveValue::U8(v.into())
                }
            };
            obj.put(DataElement::new(*tag, *vr, value));
        }
        explicit_le(&obj)
    }

    fn query_rows(store: &Store, sql: &str) -> Vec<String> {
        store
            .index()
            .with(|c| c.prepare(sql)?.query_map([], |r| r.get(0))?.collect())
            .unwrap()
    }

    #[test]
    fn received_instances_write_their_patient_study_and_series_rows() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let patient: &[(Tag, VR, &[u8])] = &[
            (tags::SPECIFIC_CHARACTER_SET, VR::CS, b"ISO_IR 100"),
            (tags::STUDY_DATE, VR::DA, b"20240131"),
            (tags::STUDY_TIME, VR::TM, b"101500.25"),
            (tags::ACCESSION_NUMBER, VR::SH, b"A7"),
            (tags::MODALITY, VR::CS, b"MR"),
            (tags::REFERRING_PHYSICIAN_NAME, VR::PN, b"Dr\xe9^Ana"),
            (tags::STUDY_DESCRIPTION, VR::LO, b"T\xeate"),
            (tags::SERIES_DESCRIPTION, VR::LO, b"t1 axial"),
            (tags::PATIENT_NAME, VR::PN, b"M\xfcller^J\xfcrgen"),
            (tags::PATIENT_ID, VR::LO, b"P1"),
            (tags::ISSUER_OF_PATIENT_ID, VR::LO, b"HOSP"),
            (tags::PATIENT_BIRTH_DATE, VR::DA, b"19700101"),
            (tags::PATIENT_SEX, VR::CS, b"F"),
            (tags::BODY_PART_EXAMINED, VR::CS, b"HEAD"),
            (tags::STUDY_ID, VR::SH, b"S1"),
            (tags::SERIES_NUMBER, VR::IS, b"4"),
            (tags::FRAME_OF_REFERENCE_UID, VR::UI, b"1.2.9"),
        ];
        for i in 0..3 {
            let sop = format!("1.2.3.4.{}", 30 + i);
            receive(
                &store,
                &sop,
                &query_data_set(&sop, "1.2.3", "1.2.3.4", patient),
            )
            .unwrap();
        }
        assert_eq!(
            query_rows(
                &store,
                "SELECT patient_id || '|' || issuer || '|' || name || '|' || birth_date || '|' || sex || '|' || charset FROM patients"
            ),
            ["P1|HOSP|Müller^Jürgen|19700101|F|ISO_IR 100"]
        );
        assert_eq!(
            query_rows(
                &store,
                "SELECT study_date || '|' || study_time || '|' || accession || '|' || study_id || '|' || description || '|' || referring FROM studies"
            ),
            ["20240131|101500.25|A7|S1|Tête|Dré^Ana"]
        );
        assert_eq!(
            query_rows(
                &store,
                "SELECT study_uid || '|' || modality || '|' || series_number || '|' || description || '|' || body_part || '|' || frame_of_reference_uid FROM series"
            ),
            ["1.2.3|MR|4|t1 axial|HEAD|1.2.9"]
        );
        // A later instance with other values updates the rows (its series description, and
        // its study now belongs to another patient: the last writer wins).
        let mut other: Vec<(Tag, VR, &[u8])> = patient.to_vec();
        for (tag, _, v) in other.iter_mut() {
            if *tag == tags::SERIES_DESCRIPTION {
                *v = b"t1 axial fixed";
            }
            if *tag == tags::PATIENT_ID {
                *v = b"P2";
            }
        }
        receive(
            &store,
            "1.2.3.4.40",
            &query_data_set("1.2.3.4.40", "1.2.3", "1.2.3.4", &other),
        )
        .unwrap();
        assert_eq!(
            query_rows(&store, "SELECT description FROM series"),
            ["t1 axial fixed"]
        );
        assert_eq!(
            query_rows(
                &store,
                "SELECT p.patient_id FROM studies s JOIN patients p ON p.pk = s.patient_pk"
            ),
            ["P2"]
        );
        assert_eq!(
            query_rows(&store, "SELECT patient_id FROM patients ORDER BY 1"),
            ["P1", "P2"]
        );
        // A series without any of the attributes: '' keys, NULL values.
        receive(
            &store,
            "1.2.5.6.1",
            &query_data_set("1.2.5.6.1", "1.2.5", "1.2.5.6", &[]),
        )
        .unwrap();
        assert_eq!(
            query_rows(
                &store,
                "SELECT '[' || patient_id || '][' || issuer || ']' || COALESCE(name, 'NULL') FROM patients WHERE patient_id = ''"
            ),
            ["[][]NULL"]
        );
        // Dropping every instance of a series removes its query rows.
        store.delete_instance("1.2.5.6.1").unwrap();
        assert_eq!(
            query_rows(&store, "SELECT series_uid FROM series"),
            ["1.2.3.4"]
        );
        assert_eq!(
            query_rows(&store, "SELECT study_uid FROM studies"),
            ["1.2.3"]
        );
        assert_eq!(
            query_rows(&store, "SELECT patient_id FROM patients ORDER BY 1"),
            ["P1", "P2"]
        );
    }

    #[test]
    fn a_result_stored_by_the_node_writes_its_rows_with_title_and_mime_type() {
        use dicom_object::{FileMetaTableBuilder, mem::InMemDicomObject};
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let stl_class = "1.2.840.10008.5.1.4.1.1.104.3";
        let mut obj = InMemDicomObject::new_empty();
        let mut put =
            |tag, vr, v: &str| obj.put(DataElement::new(tag, vr, PrimitiveValue::from(v)));
        put(tags::SPECIFIC_CHARACTER_SET, VR::CS, "ISO_IR 192");
        put(tags::SOP_CLASS_UID, VR::UI, stl_class);
        put(tags::SOP_INSTANCE_UID, VR::UI, "1.2.3.9.1");
        put(tags::MODALITY, VR::CS, "M3D");
        put(tags::PATIENT_NAME, VR::PN, "Wang^XiaoDong=王^小東");
        put(tags::PATIENT_ID, VR::LO, "P9");
        put(tags::STUDY_INSTANCE_UID, VR::UI, "1.2.3");
        put(tags::SERIES_INSTANCE_UID, VR::UI, "1.2.3.9");
        put(tags::FRAME_OF_REFERENCE_UID, VR::UI, "1.2.9");
        put(tags::DOCUMENT_TITLE, VR::ST, "Bone surface, iso 300 HU");
        put(
            tags::MIME_TYPE_OF_ENCAPSULATED_DOCUMENT,
            VR::LO,
            "model/stl",
        );
        let obj = obj
            .with_meta(
                FileMetaTableBuilder::new()
                    .media_storage_sop_class_uid(stl_class)
                    .media_storage_sop_instance_uid("1.2.3.9.1")
                    .transfer_syntax("1.2.840.10008.1.2.1"),
            )
            .unwrap();
        store.store_object(&obj, "M3DNODE").unwrap();
        assert_eq!(
            query_rows(
                &store,
                "SELECT document_title || '|' || mime_type FROM instances"
            ),
            ["Bone surface, iso 300 HU|model/stl"]
        );
        assert_eq!(
            query_rows(
                &store,
                "SELECT modality || '|' || frame_of_reference_uid FROM series"
            ),
            ["M3D|1.2.9"]
        );
        assert_eq!(
            query_rows(&store, "SELECT name FROM patients"),
            ["Wang^XiaoDong=王^小東"]
        );
    }

    #[test]
    fn a_spare_temp_file_whose_name_vanished_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let spare = store.temp_file().unwrap();
        // An operator empties tmp/ while the spare waits.
        fs::remove_dir_all(dir.path().join("tmp")).unwrap();
        let announced = Announced {
            sop_class_uid: MR.into(),
            sop_instance_uid: "1.2.3.4.7".into(),
            transfer_syntax: "1.2.840.10008.1.2.1".into(),
            calling_ae: "TEST".into(),
        };
        let mut incoming = store.begin(&announced, Some(spare)).unwrap();
        incoming.append(&data_set("1.2.3.4.7")).unwrap();
        let stored = store.commit(incoming).unwrap();
        assert!(stored.path.is_file());
    }

    /// Processes sharing a storage through PostgreSQL: each has its own lock and temp
    /// directory, one instance name cannot run twice, and nothing is re-indexed at start.
    #[test]
    fn shared_storage_processes_lock_their_instance_and_receive_apart() {
        let Some(url) = crate::db::test_pg_url() else {
            eprintln!("no PostgreSQL here: skipped");
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let settings = |instance: &str| StoreSettings {
            min_free_mb: 0,
            shared: Some(SharedIndex {
                url: url.clone(),
                pool: 2,
                instance: instance.into(),
            }),
            ..StoreSettings::at(dir.path())
        };
        // A file without a row (never acknowledged) stays unindexed in shared mode.
        let stray = dir.path().join("1.2.3/1.2.3.4/1.2.3.4.9.dcm");
        fs::create_dir_all(stray.parent().unwrap()).unwrap();
        fs::write(&stray, b"not indexed").unwrap();
        let a = Store::open(&settings("rx1")).unwrap();
        assert!(a.is_shared());
        match Store::open(&settings("rx1")) {
            Err(OpenError::InstanceInUse { instance, pid, .. }) => {
                assert_eq!(instance, "rx1");
                assert_eq!(pid, Some(std::process::id()));
            }
            other => panic!("{:?}", other.err()),
        }
        let b = Store::open(&settings("rx2")).unwrap();
        let incoming = arrive(&a, "1.2.3.4.5", &data_set("1.2.3.4.5")).unwrap();
        assert_eq!(
            fs::read_dir(dir.path().join("tmp/rx1")).unwrap().count(),
            1,
            "rx1 receives into its own temp directory"
        );
        assert_eq!(fs::read_dir(dir.path().join("tmp/rx2")).unwrap().count(), 0);
        let stored = a.commit(incoming).unwrap();
        assert!(stored.path.is_file());
        assert!(b.index().has_instance("1.2.3.4.5").unwrap(), "one index");
        assert!(!b.index().has_instance("1.2.3.4.9").unwrap());
        a.mark_clean_shutdown().unwrap();
        assert!(!dir.path().join("clean-shutdown").exists());
    }
}
