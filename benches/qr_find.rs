//! C-FIND latency over the wire: the node (`m3dnode serve`, this build) on an index of
//! 1,000,000 instances, asked the four queries of issue 13 a hundred times each on one
//! association, each timed from the C-FIND-RQ's first byte to the final response. Run with
//! `cargo bench --bench qr_find` (plain `harness = false`).
//!
//! The index is made by `db::Db::open` (the node's own schema, at its latest version) and
//! filled by `query::synthetic::fill` (10,000 studies x 100 instances by default; no files
//! behind the rows, which C-FIND never reads). Compare with `cargo bench --bench query`, the
//! same queries at SQL level: the difference is the network layer (PDU framing, the
//! operation task, one response per match).
//!
//! `QR_FIND_STUDIES`, `QR_FIND_INSTANCES` and `QR_FIND_RUNS` change the size and repetitions.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dicom_ul::pdu::PDataValueType;
use m3dnode::net::dimse::{self, Command as Dimse};
use m3dnode::query::synthetic;

const STUDY_FIND: &str = "1.2.840.10008.5.1.4.1.2.2.1";
const TS: &str = "1.2.840.10008.1.2.1";

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

type Assoc = dicom_ul::ClientAssociation<std::net::TcpStream>;

/// One C-FIND: sends it, reads every response; returns the matches and the final status.
fn find(assoc: &mut Assoc, pc: u8, id: u16, identifier: &[u8]) -> (usize, u16) {
    let max = assoc.acceptor_max_pdu_length();
    let cmd = dimse::c_find_rq(id, STUDY_FIND).encode();
    for pdu in dimse::pdata_pdus(pc, PDataValueType::Command, &cmd, max, true)
        .into_iter()
        .chain(dimse::pdata_pdus(
            pc,
            PDataValueType::Data,
            identifier,
            max,
            true,
        ))
    {
        assoc.send(&pdu).expect("send");
    }
    let mut matches = 0;
    let mut command = Vec::new();
    loop {
        let dicom_ul::Pdu::PData { data } = assoc.receive().expect("receive") else {
            panic!("not P-DATA")
        };
        for pdv in data {
            if pdv.value_type == PDataValueType::Command {
                command.extend_from_slice(&pdv.data);
                if pdv.is_last {
                    let c = Dimse::parse(&command).expect("command set");
                    command.clear();
                    let status = c.status().expect("status");
                    if status != 0xFF00 && status != 0xFF01 {
                        return (matches, status);
                    }
                    matches += 1;
                }
            }
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let studies = env("QR_FIND_STUDIES", 10_000);
    let per_study = env("QR_FIND_INSTANCES", 100);
    let runs = env("QR_FIND_RUNS", 100);
    let seed = 1;

    let dir = tempfile::tempdir()?;
    let storage = dir.path().join("var");
    std::fs::create_dir_all(&storage)?;
    let t = Instant::now();
    {
        let db = m3dnode::db::Db::open(&storage.join("index.sqlite"))?;
        db.with(|c| synthetic::fill(c, studies, per_study, seed))?;
    }
    println!(
        "index: {studies} studies x {per_study} instances, filled in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let config = dir.path().join("m3dnode.toml");
    std::fs::write(
        &config,
        format!(
            "[node]\nlisten = \"127.0.0.1:0\"\nstorage = \"{}\"\nmin_free_mb = 1\n\
             [[peers]]\nae_title = \"BENCH\"\naddress = \"127.0.0.1:1\"\n",
            storage.display()
        ),
    )?;
    let mut node = Command::new(env!("CARGO_BIN_EXE_m3dnode"))
        .args(["serve", "--config"])
        .arg(&config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let mut line = String::new();
    BufReader::new(node.stdout.take().ok_or("no stdout")?).read_line(&mut line)?;
    let addr: std::net::SocketAddr = line
        .trim()
        .strip_prefix("m3dnode listening on ")
        .ok_or("the node did not start")?
        .parse()?;
    let mut assoc = dicom_ul::ClientAssociationOptions::new()
        .calling_ae_title("BENCH")
        .called_ae_title("M3DNODE")
        .with_presentation_context(STUDY_FIND, vec![TS])
        .establish(addr)?;
    // dicom-ul's client leaves Nagle on: the identifier's PDU would wait for the ACK of the
    // command's (40 ms of delayed ACK per query on Linux).
    assoc.inner_stream().set_nodelay(true)?;
    let pc = assoc.presentation_contexts()[0].id;

    let study_returns: [(&str, &str); 8] = [
        ("00100010", ""),
        ("00100020", ""),
        ("0020000D", ""),
        ("00080020", ""),
        ("00080030", ""),
        ("00081030", ""),
        ("00080061", ""),
        ("00201208", ""),
    ];
    // The keys of every run, drawn as bench/qr_data.py draws them (leaked: the boxed key
    // makers below must be 'static).
    let scheme = synthetic::Scheme::new(seed, per_study)?;
    let drawn: Vec<synthetic::Study> = scheme.studies().take(studies as usize).collect();
    let drawn_keys: &'static [synthetic::QueryKeys] = (0..runs.max(1))
        .map(|q| scheme.query_keys(&drawn, q))
        .collect::<Vec<_>>()
        .leak();
    type Keys = Box<dyn Fn(u64) -> Vec<(String, String)>>;
    let cases: Vec<(&str, f64, Keys)> = synthetic::BENCH_QUERIES
        .iter()
        .map(|q| {
            let keys: Keys = Box::new(move |i| q.keys(&drawn_keys[i as usize], &study_returns));
            (q.name, q.goal_ms, keys)
        })
        .collect();
    println!(
        "{:<32} {:>9} {:>9} {:>8} {:>8}",
        "query (over the wire)", "median ms", "p99 ms", "goal ms", "matches"
    );
    let mut id = 0u16;
    for (name, goal, keys) in &cases {
        let mut times: Vec<Duration> = Vec::new();
        let mut total = 0usize;
        for i in 0..runs {
            let k = keys(i);
            let refs: Vec<(&str, &str)> = k.iter().map(|(t, v)| (t.as_str(), v.as_str())).collect();
            let identifier = synthetic::identifier(&refs);
            id = id.wrapping_add(1).max(1);
            let t = Instant::now();
            let (n, status) = find(&mut assoc, pc, id, &identifier);
            times.push(t.elapsed());
            assert!(
                status == 0 || status == 0xA700,
                "{name}: status {status:#06x}"
            );
            total += n;
        }
        times.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let p99 = times[((times.len() * 99).div_ceil(100)).saturating_sub(1)];
        println!(
            "{name:<32} {:>9.2} {:>9.2} {goal:>8.0} {:>8.1}",
            ms(times[times.len() / 2]),
            ms(p99),
            total as f64 / runs as f64
        );
    }
    let _ = assoc.release();
    let _ = node.kill();
    let _ = node.wait();
    Ok(())
}
