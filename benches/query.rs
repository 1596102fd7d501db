//! C-FIND matching latency at SQL level (plain `harness = false`, no criterion). Run with
//! `cargo bench --bench query`.
//!
//! Loads a synthetic index (`query::synthetic::fill`, default 10,000 studies x 100 instances
//! = 1,000,000 instances) into a SQLite file in WAL mode with the library's default page
//! cache, as the node opens its index, then times `Query::parse` + `Query::find` (encoding
//! the responses included) for the four queries of issue 13, 100 runs each on one
//! connection, each run with another patient / month / study (drawn from the data set as
//! bench/qr_data.py draws them for bench/qr.sh) so that no run repeats the previous one's
//! pages exactly. Prints the load time, the plans, and median and p99 per query.
//!
//! `QUERY_BENCH_STUDIES`, `QUERY_BENCH_INSTANCES` and `QUERY_BENCH_RUNS` change the size and
//! the repetitions.

use std::time::{Duration, Instant};

use m3dnode::query::{Model, Query, Service, synthetic};

const TS: &str = "1.2.840.10008.1.2.1";

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let studies = env("QUERY_BENCH_STUDIES", 10_000);
    let per_study = env("QUERY_BENCH_INSTANCES", 100);
    let runs = env("QUERY_BENCH_RUNS", 100) as usize;
    let seed = 1;

    let dir = tempfile::tempdir()?;
    let path = dir.path().join("index.sqlite");
    // The node's schema, made by its database module; then a plain connection to time on.
    drop(m3dnode::db::Db::open(&path)?);
    let conn = rusqlite::Connection::open(&path)?;
    let t = Instant::now();
    synthetic::fill(&conn, studies, per_study, seed)?;
    let load = t.elapsed();
    // The keys of every run, drawn as bench/qr_data.py draws them (leaked: the boxed key
    // makers below must be 'static).
    let scheme = synthetic::Scheme::new(seed, per_study)?;
    let drawn: Vec<synthetic::Study> = scheme.studies().take(studies as usize).collect();
    let drawn_keys: &'static [synthetic::QueryKeys] = (0..runs.max(1) as u64)
        .map(|q| scheme.query_keys(&drawn, q))
        .collect::<Vec<_>>()
        .leak();
    let (patients, instances, smi): (i64, i64, i64) = conn.query_row(
        "SELECT (SELECT COUNT(*) FROM patients), (SELECT COUNT(*) FROM instances), \
         (SELECT COUNT(*) FROM patients WHERE name GLOB 'SMI*')",
        [],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    let size = std::fs::metadata(&path)?.len()
        + std::fs::metadata(path.with_extension("sqlite-wal")).map_or(0, |m| m.len());
    println!(
        "index: {studies} studies, {patients} patients ({smi} SMI*), {instances} instances, \
         {:.0} MB, loaded in {:.1} s",
        size as f64 / 1e6,
        load.as_secs_f64()
    );

    type Keys = Box<dyn Fn(u64) -> Vec<(String, String)>>;
    let study_returns = [
        ("00100010", ""),
        ("00100020", ""),
        ("00080020", ""),
        ("00080030", ""),
        ("00081030", ""),
        ("00080061", ""),
        ("00201208", ""),
    ];
    let cases: Vec<(&str, f64, Keys)> = synthetic::BENCH_QUERIES
        .iter()
        .map(|q| {
            let keys: Keys = Box::new(move |i| q.keys(&drawn_keys[i as usize], &study_returns));
            (q.name, q.goal_ms, keys)
        })
        .collect();

    println!(
        "{:<32} {:>9} {:>9} {:>8} {:>8}",
        "query", "median ms", "p99 ms", "goal ms", "matches"
    );
    for (name, goal, keys) in &cases {
        let ident = |i| {
            let k = keys(i);
            let refs: Vec<(&str, &str)> = k.iter().map(|(t, v)| (t.as_str(), v.as_str())).collect();
            synthetic::identifier(&refs)
        };
        let plan = Query::parse(Model::StudyRoot, Service::Find, &ident(0), TS)?.explain(&conn)?;
        let mut times: Vec<Duration> = Vec::with_capacity(runs);
        let mut matches = 0;
        for i in 0..runs as u64 {
            let bytes = ident(i);
            let t = Instant::now();
            let query = Query::parse(Model::StudyRoot, Service::Find, &bytes, TS)?;
            let found = query.find(&conn, 1000, TS)?;
            times.push(t.elapsed());
            matches += found.matches.len();
        }
        times.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let p99 = times[(times.len() * 99 / 100).min(times.len() - 1)];
        println!(
            "{name:<32} {:>9.3} {:>9.3} {goal:>8.1} {:>8.1}",
            ms(times[times.len() / 2]),
            ms(p99),
            matches as f64 / runs as f64
        );
        for line in plan {
            println!("    plan: {line}");
        }
    }
    Ok(())
}
