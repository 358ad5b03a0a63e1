use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use super::*;

fn pod(id: &str) -> PodRecord {
    PodRecord { id: id.into(), name: format!("pod-{id}"), namespace: "default".into(), ..Default::default() }
}

#[test]
fn records_round_trip_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        store.put("a", &pod("a")).unwrap();
        store.put("b", &pod("b")).unwrap();
        assert!(store.delete::<PodRecord>("a").unwrap());
        assert!(!store.delete::<PodRecord>("a").unwrap());
        store.set_setting("pod_cidr", "10.1.0.0/16").unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
    assert_eq!(store.get::<PodRecord>("a").unwrap(), None);
    assert_eq!(store.get::<PodRecord>("b").unwrap(), Some(pod("b")));
    assert_eq!(store.list::<PodRecord>().unwrap(), vec![pod("b")]);
    assert_eq!(store.setting("pod_cidr").unwrap().as_deref(), Some("10.1.0.0/16"));
}

#[test]
fn failed_transaction_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let r: Result<(), StoreError> = store.write(|tx| {
        tx.put("x", &pod("x"))?;
        Err(StoreError::Db("abandon".into()))
    });
    assert!(r.is_err());
    assert_eq!(store.get::<PodRecord>("x").unwrap(), None);
}

#[test]
fn newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        let tx = store.db.begin_write().unwrap();
        tx.open_table(META).unwrap().insert(SCHEMA_KEY, SCHEMA_VERSION + 1).unwrap();
        tx.commit().unwrap();
    }
    let err = Store::open(dir.path()).unwrap_err();
    assert!(matches!(err, StoreError::TooNew { .. }), "{err}");
    assert!(err.to_string().contains("newer"));
}

#[test]
fn undecodable_record_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    {
        let tx = store.db.begin_write().unwrap();
        let def: TableDefinition<&str, &[u8]> = TableDefinition::new("garbage");
        tx.open_table(def).unwrap().insert("k", b"{not json".as_slice()).unwrap();
        tx.commit().unwrap();
        let tx = store.db.begin_read().unwrap();
        // A table opened under another type is refused by redb itself.
        let wrong: TableDefinition<&str, Json<PodRecord>> = TableDefinition::new("garbage");
        assert!(tx.open_table(wrong).is_err());
    }
    assert!(Json::<PodRecord>::from_bytes_checked(b"{not json").is_err());
}

impl<T: Serialize + DeserializeOwned + std::fmt::Debug + 'static> Json<T> {
    fn from_bytes_checked(b: &[u8]) -> Result<T, String> {
        <Json<T> as redb::Value>::from_bytes(b)
    }
}

/// Not a test on its own: the writer process that `kill9_during_writes_keeps_committed_records`
/// starts and kills. It commits pod+lease pairs forever and reports each commit on stdout.
#[test]
#[ignore = "helper process for kill9_during_writes_keeps_committed_records"]
fn crash_child_writer() {
    let Ok(dir) = std::env::var("BERTH_STORE_CRASH_DIR") else { return };
    let start: u64 = std::env::var("BERTH_STORE_CRASH_START").unwrap().parse().unwrap();
    let store = Store::open(Path::new(&dir)).unwrap();
    for i in start.. {
        let id = format!("{i:012}");
        store
            .write(|tx| {
                tx.put(&id, &PodRecord { annotations: [("pad".into(), "x".repeat(512))].into(), ..pod(&id) })?;
                tx.put(&id, &LeaseRecord { ip: id.clone(), pod_id: id.clone() })
            })
            .unwrap();
        println!("committed {i}");
    }
}

#[test]
fn kill9_during_writes_keeps_committed_records() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut committed: Vec<u64> = Vec::new();
    for round in 0..4u64 {
        let start = committed.last().map(|n| n + 1).unwrap_or(0);
        let mut child = Command::new(&exe)
            .args(["--exact", "store::tests::crash_child_writer", "--ignored", "--nocapture", "--test-threads=1"])
            .env("BERTH_STORE_CRASH_DIR", dir.path())
            .env("BERTH_STORE_CRASH_START", start.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        // Let it commit a varying number of transactions, then kill it mid-stream.
        let target = 50 + round * 37;
        let mut seen = 0;
        for line in lines.by_ref() {
            let line = line.unwrap();
            if let Some(n) = line.strip_prefix("committed ") {
                committed.push(n.parse().unwrap());
                seen += 1;
                if seen >= target {
                    break;
                }
            }
        }
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
        // Commits reported between our last read and the kill are durable too.
        for line in lines {
            if let Some(n) = line.unwrap().strip_prefix("committed ") {
                committed.push(n.parse().unwrap());
            }
        }
        let status = child.wait().unwrap();
        assert!(!status.success(), "writer should have been killed");

        let store = Store::open(dir.path()).expect("store opens after kill -9");
        let pods = store.list::<PodRecord>().unwrap();
        let leases = store.list::<LeaseRecord>().unwrap();
        for n in &committed {
            let id = format!("{n:012}");
            assert!(store.get::<PodRecord>(&id).unwrap().is_some(), "round {round}: committed pod {id} lost");
            assert!(store.get::<LeaseRecord>(&id).unwrap().is_some(), "round {round}: committed lease {id} lost");
        }
        // A transaction is all or nothing: pods and leases are written in pairs.
        assert_eq!(pods.len(), leases.len(), "round {round}: torn transaction");
        assert!(pods.len() >= committed.len());
        // The next round continues after whatever the last one got in, reported or not.
        if let Some(last) = pods.last() {
            let last: u64 = last.id.parse().unwrap();
            committed.push(last);
            committed.sort_unstable();
            committed.dedup();
        }
    }
    assert!(committed.len() > 200);
}

/// Not a test on its own: the process that `a_volatile_put_is_kept_by_the_next_durable_one_and_lost_without`
/// starts and kills: a volatile put, a durable one, another volatile one.
#[test]
#[ignore = "helper process for a_volatile_put_is_kept_by_the_next_durable_one_and_lost_without"]
fn volatile_child_writer() {
    let Ok(dir) = std::env::var("BERTH_STORE_VOLATILE_DIR") else { return };
    let store = Store::open(Path::new(&dir)).unwrap();
    store.put_volatile("v1", &pod("v1")).unwrap();
    assert_eq!(store.get::<PodRecord>("v1").unwrap(), Some(pod("v1")), "seen at once");
    store.put("d", &pod("d")).unwrap();
    store.put_volatile("v2", &pod("v2")).unwrap();
    println!("written");
    std::thread::sleep(std::time::Duration::from_secs(60));
}

#[test]
fn a_volatile_put_is_kept_by_the_next_durable_one_and_lost_without() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "store::tests::volatile_child_writer", "--ignored", "--nocapture", "--test-threads=1"])
        .env("BERTH_STORE_VOLATILE_DIR", dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let written = BufReader::new(child.stdout.take().unwrap()).lines().any(|l| l.unwrap().contains("written"));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    let _ = child.wait();
    assert!(written, "the writer did not finish");
    let store = Store::open(dir.path()).expect("store opens after kill -9");
    let ids: Vec<String> = store.list::<PodRecord>().unwrap().into_iter().map(|p| p.id).collect();
    assert_eq!(ids, ["d", "v1"], "v1 went with the durable put after it; v2 died with the process");
}
