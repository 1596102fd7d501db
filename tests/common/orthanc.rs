//! A throwaway Orthanc PACS on loopback for round-trip tests: Orthanc pushes a study to
//! the node (C-STORE SCU), the node stores its mesh back into Orthanc (C-STORE SCP), and
//! the test reads the result over Orthanc's REST API.
//!
//! Needs Debian's `orthanc` package (binary `/usr/sbin/Orthanc`, not on a non-root PATH)
//! and `curl`; `scripts/test` installs both. Std only, plus `tempfile` and `serde_json`.
#![allow(dead_code)]

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tempfile::TempDir;

/// How long Orthanc may take to answer `GET /system` (it is ready in well under 1 s).
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running Orthanc with its own config, storage and log under a temp dir.
/// Killed (and waited for) on drop.
pub struct Orthanc {
    pub child: Child,
    pub http_port: u16,
    pub dicom_port: u16,
    pub dir: TempDir,
    pub log_path: PathBuf,
}

impl Orthanc {
    /// Orthanc's own AE title.
    pub const AET: &'static str = "ORTHANC";
    /// The name under which the node is registered in `DicomModalities`.
    pub const NODE: &'static str = "NODE";

    /// Starts Orthanc (AE `ORTHANC`) on free loopback ports, with the node registered as
    /// modality `NODE` = `node_ae`@127.0.0.1:`node_port`. Waits until `/system` answers;
    /// panics with the log if it does not. Retries with new ports if one was taken.
    pub fn start(node_ae: &str, node_port: u16) -> Orthanc {
        let bin = orthanc_bin();
        let mut last_log = String::new();
        for _attempt in 0..3 {
            let dir = tempfile::Builder::new()
                .prefix("orthanc-")
                .tempdir()
                .unwrap();
            let (http_port, dicom_port) = two_free_ports();
            let config = dir.path().join("orthanc.json");
            let conf = config_json(dir.path(), http_port, dicom_port, node_ae, node_port);
            std::fs::write(&config, serde_json::to_string_pretty(&conf).unwrap()).unwrap();
            let log_path = dir.path().join("orthanc.log");
            let log = File::create(&log_path).unwrap();
            let child = Command::new(&bin)
                .arg("--verbose")
                .arg(&config)
                .current_dir(dir.path())
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("spawning {}: {e}", bin.display()));
            let mut o = Orthanc {
                child,
                http_port,
                dicom_port,
                dir,
                log_path,
            };
            let deadline = Instant::now() + START_TIMEOUT;
            loop {
                if let Some(status) = o.child.try_wait().unwrap() {
                    last_log = o.log();
                    eprintln!("Orthanc exited during startup ({status}); retrying with new ports");
                    break; // drop `o`, try again with other ports
                }
                let (code, body) = o.curl(&["--max-time", "2", &o.url("/system")]);
                if code == 200 && body.contains("DicomAet") {
                    return o;
                }
                if Instant::now() > deadline {
                    panic!(
                        "Orthanc did not answer /system within {START_TIMEOUT:?}; log:\n{}",
                        o.log()
                    );
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        panic!("Orthanc failed to start 3 times; last log:\n{last_log}");
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.http_port)
    }

    /// Orthanc's log so far (stdout + stderr, `--verbose`).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The last `n` lines of the log, for failure messages.
    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Runs `curl -sS <args>`, returning (HTTP status, body); status 0 if no answer.
    fn curl(&self, args: &[&str]) -> (u16, String) {
        let out = Command::new("curl")
            .args(["-sS", "--write-out", "\n%{http_code}"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| {
                panic!("running curl (is it installed? scripts/test installs it): {e}")
            });
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        (code.trim().parse().unwrap_or(0), body.to_string())
    }

    /// `GET path` (30 s cap), asserting 200, parsed as JSON.
    pub fn get_json(&self, path: &str) -> Value {
        let (code, body) = self.curl(&["--max-time", "30", &self.url(path)]);
        assert_eq!(
            code,
            200,
            "GET {path} -> {code}: {body}\nOrthanc log (tail):\n{}",
            self.log_tail(40)
        );
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: bad JSON ({e}): {body}"))
    }

    /// `POST path` with `data` (curl `--data-binary` syntax, e.g. `@file`), asserting 200.
    pub fn post_json(&self, path: &str, data: &str, timeout_s: u32) -> Value {
        let t = timeout_s.to_string();
        let (code, body) = self.curl(&[
            "--max-time",
            &t,
            "-X",
            "POST",
            "-H",
            "Expect:",
            "--data-binary",
            data,
            &self.url(path),
        ]);
        assert_eq!(
            code,
            200,
            "POST {path} -> {code}: {body}\nOrthanc log (tail):\n{}",
            self.log_tail(40)
        );
        serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("POST {path}: bad JSON ({e}): {body}"))
    }

    /// Uploads one DICOM file (`POST /instances`); returns its Orthanc study id.
    pub fn upload(&self, file: &Path) -> String {
        let r = self.post_json("/instances", &format!("@{}", file.display()), 60);
        let status = r["Status"].as_str().unwrap_or("");
        assert!(
            status == "Success" || status == "AlreadyStored",
            "uploading {}: {r}",
            file.display()
        );
        match r["ParentStudy"].as_str() {
            Some(s) => s.to_string(),
            None => {
                let id = r["ID"].as_str().expect("upload answer has no ID");
                self.get_json(&format!("/instances/{id}/study"))["ID"]
                    .as_str()
                    .unwrap()
                    .to_string()
            }
        }
    }

    /// Uploads every regular file of `dir` (sorted); returns the study id (asserting all
    /// went to one study) and the count.
    pub fn upload_dir(&self, dir: &Path) -> (String, usize) {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        let mut study = None;
        for f in &files {
            let s = self.upload(f);
            if let Some(prev) = &study {
                assert_eq!(prev, &s, "{} is in another study", f.display());
            }
            study = Some(s);
        }
        (study.expect("no files to upload"), files.len())
    }

    /// Has Orthanc C-STORE the whole study (or series/instance: any Orthanc id) to the
    /// registered `modality`, synchronously; asserts every instance was accepted.
    pub fn push_study_to(&self, modality: &str, study_id: &str) {
        let body = json!({ "Resources": [study_id], "Synchronous": true, "Timeout": 60 });
        let r = self.post_json(
            &format!("/modalities/{modality}/store"),
            &body.to_string(),
            180,
        );
        let failed = r["FailedInstancesCount"].as_u64().unwrap_or(0);
        let sent = r["InstancesCount"].as_u64();
        assert!(
            failed == 0 && sent != Some(0),
            "store to {modality} failed: {r}\nOrthanc log (tail):\n{}",
            self.log_tail(40)
        );
    }

    /// `GET /studies/{id}/series` (empty if the study does not exist yet).
    pub fn series_of_study(&self, study_id: &str) -> Vec<Value> {
        let path = format!("/studies/{study_id}/series");
        let (code, body) = self.curl(&["--max-time", "30", &self.url(&path)]);
        match code {
            200 => serde_json::from_str::<Vec<Value>>(&body)
                .unwrap_or_else(|e| panic!("GET {path}: bad JSON ({e}): {body}")),
            404 => Vec::new(),
            _ => panic!(
                "GET {path} -> {code}: {body}\nOrthanc log (tail):\n{}",
                self.log_tail(40)
            ),
        }
    }

    /// Polls until the study has a series whose Modality is `modality`; returns that
    /// series' JSON (`ID`, `Instances`, `MainDicomTags`, ...), or None after `timeout`.
    pub fn wait_for_modality(
        &self,
        study_id: &str,
        modality: &str,
        timeout: Duration,
    ) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let found = self.series_of_study(study_id).into_iter().find(|s| {
                s["MainDicomTags"]["Modality"].as_str() == Some(modality)
                    && s["Instances"].as_array().is_some_and(|i| !i.is_empty())
            });
            if found.is_some() || Instant::now() >= deadline {
                return found;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Downloads an instance's DICOM file (`GET /instances/{id}/file`) to `dest`.
    pub fn download_instance(&self, instance_id: &str, dest: &Path) {
        let path = format!("/instances/{instance_id}/file");
        let dest_s = dest.display().to_string();
        let (code, body) = self.curl(&["--max-time", "60", "-o", &dest_s, &self.url(&path)]);
        assert_eq!(code, 200, "GET {path} -> {code}: {body}");
    }

    /// The study's StudyInstanceUID (`GET /studies/{id}`).
    pub fn study_instance_uid(&self, study_id: &str) -> String {
        self.get_json(&format!("/studies/{study_id}"))["MainDicomTags"]["StudyInstanceUID"]
            .as_str()
            .expect("study has no StudyInstanceUID")
            .to_string()
    }

    /// Orthanc study ids with this StudyInstanceUID (`POST /tools/lookup`).
    pub fn lookup_study(&self, study_instance_uid: &str) -> Vec<String> {
        let r = self.post_json("/tools/lookup", study_instance_uid, 30);
        r.as_array()
            .into_iter()
            .flatten()
            .filter(|x| x["Type"] == "Study")
            .filter_map(|x| x["ID"].as_str().map(str::to_string))
            .collect()
    }
}

impl Drop for Orthanc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Debian installs `/usr/sbin/Orthanc`; `/usr/sbin` is not on every PATH.
fn orthanc_bin() -> PathBuf {
    let path = std::env::var("PATH").unwrap_or_default();
    let dirs = path
        .split(':')
        .chain(["/usr/sbin", "/usr/local/sbin", "/usr/local/bin"]);
    for dir in dirs {
        let p = Path::new(dir).join("Orthanc");
        if p.is_file() {
            return p;
        }
    }
    panic!("`Orthanc` is not installed: run scripts/test, which installs the `orthanc` package");
}

/// Two distinct free loopback ports (both listeners held until both are chosen).
fn two_free_ports() -> (u16, u16) {
    let a = TcpListener::bind("127.0.0.1:0").unwrap();
    let b = TcpListener::bind("127.0.0.1:0").unwrap();
    (
        a.local_addr().unwrap().port(),
        b.local_addr().unwrap().port(),
    )
}

fn config_json(
    dir: &Path,
    http_port: u16,
    dicom_port: u16,
    node_ae: &str,
    node_port: u16,
) -> Value {
    let db = dir.join("db");
    // Several small `json!` blocks: one big one exceeds the default macro recursion limit.
    let general = json!({
        "Name": "m3dnode-test",
        "StorageDirectory": db,
        "IndexDirectory": db,
        "StorageCompression": false,
        "MaximumStorageSize": 0,
        "MaximumPatientCount": 0,
        "Plugins": [],
        "LuaScripts": [],
        "ExecuteLuaEnabled": false,
        "ConcurrentJobs": 2,
        "SaveJobs": false,
        "OverwriteInstances": true,
        "StableAge": 2,
        "DeidentifyLogs": false
    });
    let http = json!({
        "HttpServerEnabled": true,
        "HttpPort": http_port,
        "RemoteAccessAllowed": false,
        "AuthenticationEnabled": false,
        "SslEnabled": false,
        "HttpTimeout": 60,
        "OrthancPeers": {}
    });
    let dicom = json!({
        "DicomServerEnabled": true,
        "DicomAet": Orthanc::AET,
        "DicomPort": dicom_port,
        "DicomCheckCalledAet": false,
        "DicomCheckModalityHost": false,
        "DicomAlwaysAllowEcho": true,
        "DicomAlwaysAllowStore": true,
        "UnknownSopClassAccepted": false, // STL (1.2.840.10008.5.1.4.1.1.104.3) is a known class in 1.10.1
        "AcceptedTransferSyntaxes": ["1.2.840.10008.1.*"],
        "DicomScpTimeout": 30,
        "DicomScuTimeout": 30,
        "DicomAssociationCloseDelay": 0,
        "DicomScuPreferredTransferSyntax": "1.2.840.10008.1.2.1",
        "DicomModalitiesInDatabase": false
    });
    let node = json!({
        "AET": node_ae,
        "Host": "127.0.0.1",
        "Port": node_port,
        "Manufacturer": "Generic",
        "AllowEcho": true,
        "AllowStore": true,
        "AllowFind": false,
        "AllowMove": false,
        "AllowGet": false,
        "AllowTranscoding": true
    });
    let mut conf = serde_json::Map::new();
    for part in [general, http, dicom] {
        conf.extend(part.as_object().unwrap().clone());
    }
    conf.insert("DicomModalities".into(), json!({ (Orthanc::NODE): node }));
    Value::Object(conf)
}
