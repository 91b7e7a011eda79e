//! Bootstrap: unique ids, secrets, stores, launcher environments, ranks that never arrive.

mod common;

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::on_all;
use oxccl::{Communicator, Config, ErrorKind, FileStore, ReduceOp, UniqueId};

fn quick() -> Config {
    Config::default().with_timeout(Duration::from_secs(20))
}

fn sum_check(comms: &[Communicator]) {
    let fails = on_all(comms, |c| {
        let mut v = vec![c.rank() as i64 + 1; 100];
        c.all_reduce(&mut v, ReduceOp::Sum).unwrap();
        let p = c.size() as i64;
        if v.iter().all(|&x| x == p * (p + 1) / 2) {
            vec![]
        } else {
            vec![format!("rank {} got {:?}", c.rank(), &v[..3])]
        }
    });
    assert!(fails.is_empty(), "{fails:?}");
}

#[test]
fn unique_id_travels_as_text_and_forms_a_world() {
    let text = UniqueId::new().unwrap().to_string();
    let hs: Vec<_> = (0..3)
        .map(|r| {
            let t = text.clone();
            std::thread::spawn(move || Communicator::init(&t.parse().unwrap(), r, 3, quick()).unwrap())
        })
        .collect();
    let comms: Vec<_> = hs.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(
        comms.iter().map(|c| (c.rank(), c.size(), c.local_size())).collect::<Vec<_>>(),
        vec![(0, 3, 3), (1, 3, 3), (2, 3, 3)]
    );
    assert_eq!(comms[2].local_rank(), 2);
    sum_check(&comms);
}

#[test]
fn wrong_secret_is_refused_and_the_world_still_forms() {
    let id = UniqueId::new().unwrap();
    let mut secret = id.secret;
    secret[0] ^= 1;
    let intruder = UniqueId::from_parts(id.addr, secret);
    let e = Communicator::init(&intruder, 1, 2, quick()).unwrap_err();
    assert!(e.to_string().contains("secret"), "{e}");
    let h = std::thread::spawn(move || Communicator::init(&id, 1, 2, quick()).unwrap());
    let c0 = Communicator::init(&id, 0, 2, quick()).unwrap();
    let c1 = h.join().unwrap();
    sum_check(&[c0, c1]);
}

#[test]
fn a_rank_that_never_arrives_gives_a_timeout_naming_it() {
    let id = UniqueId::new().unwrap();
    let start = Instant::now();
    let e = Communicator::init(&id, 0, 2, Config::default().with_timeout(Duration::from_millis(500))).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
    assert!(e.to_string().contains("[1]"), "the message names rank 1: {e}");
    assert!(start.elapsed() < Duration::from_secs(5));
}

#[test]
fn bad_world_arguments_are_invalid_arguments() {
    let id = UniqueId::new().unwrap();
    assert_eq!(Communicator::init(&id, 2, 2, quick()).unwrap_err().kind(), ErrorKind::InvalidArgument);
    assert_eq!(Communicator::init(&id, 0, 0, quick()).unwrap_err().kind(), ErrorKind::InvalidArgument);
    assert_eq!(Communicator::local_world(0, quick()).unwrap_err().kind(), ErrorKind::InvalidArgument);
}

#[test]
fn file_store_world() {
    let dir = std::env::temp_dir().join(format!("oxccl-filestore-{}", std::process::id()));
    let secret = [7u8; 16];
    let hs: Vec<_> = (0..3)
        .map(|r| {
            let d = dir.clone();
            std::thread::spawn(move || {
                let store = Arc::new(FileStore::new(&d).unwrap());
                Communicator::init_with_store(store, secret, [127, 0, 0, 1].into(), r, 3, quick()).unwrap()
            })
        })
        .collect();
    let comms: Vec<_> = hs.into_iter().map(|h| h.join().unwrap()).collect();
    sum_check(&comms);
    let _ = std::fs::remove_dir_all(&dir);
}

fn bench() -> Command {
    Command::new(env!("CARGO_BIN_EXE_oxccl-bench"))
}

#[test]
fn missing_launcher_variable_is_named() {
    let out = bench().env("OXCCL_RANK", "0").env("OXCCL_ADDR", "127.0.0.1:1").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("OXCCL_WORLD_SIZE"), "{err}");
    let out = bench().env("RANK", "0").env("WORLD_SIZE", "2").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("MASTER_ADDR"), "{err}");
}

/// A port free now, below Linux's ephemeral range (32768-60999), so that no outgoing
/// connection takes it as its local port before the test's process binds it.
fn free_port() -> u16 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let mut x = (std::process::id() as u64) << 32 ^ now.as_nanos() as u64 ^ 0x9e37_79b9_7f4a_7c15;
    for _ in 0..1000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let port = 21000 + (x % 11000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in 21000..32000")
}

fn run_pair(env_of: impl Fn(usize) -> Vec<(String, String)>) {
    let children: Vec<_> = (0..2)
        .map(|r| {
            bench()
                .args(["-b", "8", "-e", "64K", "-f", "8", "-n", "2", "-w", "1", "-c", "1", "--collective", "all"])
                .envs(env_of(r))
                .env("OXCCL_TIMEOUT_MS", "30000")
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outs: Vec<_> = children.into_iter().map(|c| c.wait_with_output().unwrap()).collect();
    for (r, o) in outs.iter().enumerate() {
        assert!(
            o.status.success(),
            "rank {r}: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let table = String::from_utf8_lossy(&outs[0].stdout);
    assert_eq!(table.matches("# Out of bounds values : 0 OK").count(), 6, "{table}");
}

#[test]
fn runs_under_torchrun_variables() {
    let port = free_port();
    run_pair(|r| {
        vec![
            ("RANK".into(), r.to_string()),
            ("WORLD_SIZE".into(), "2".into()),
            ("LOCAL_RANK".into(), r.to_string()),
            ("MASTER_ADDR".into(), "127.0.0.1".into()),
            ("MASTER_PORT".into(), port.to_string()),
        ]
    });
}

#[test]
fn runs_under_open_mpi_variables_on_one_host() {
    let job = format!("test-{}-{}", std::process::id(), free_port());
    run_pair(|r| {
        vec![
            ("OMPI_COMM_WORLD_RANK".into(), r.to_string()),
            ("OMPI_COMM_WORLD_SIZE".into(), "2".into()),
            ("OMPI_COMM_WORLD_LOCAL_RANK".into(), r.to_string()),
            ("OMPI_COMM_WORLD_LOCAL_SIZE".into(), "2".into()),
            ("PMIX_NAMESPACE".into(), job.clone()),
        ]
    });
}

#[test]
fn runs_under_slurm_variables_on_one_node() {
    let job = format!("{}", std::process::id() as u64 * 7 + free_port() as u64);
    run_pair(|r| {
        vec![
            ("SLURM_PROCID".into(), r.to_string()),
            ("SLURM_NTASKS".into(), "2".into()),
            ("SLURM_LOCALID".into(), r.to_string()),
            ("SLURM_NNODES".into(), "1".into()),
            ("SLURM_JOB_ID".into(), job.clone()),
            ("SLURM_STEP_ID".into(), "0".into()),
        ]
    });
}

/// Under mpirun on one host oxccl derives the store's port from the job; when another program
/// holds it (the CI run of e4f219f lost a real-mpirun test to an outgoing connection's local
/// port), rank 0 moves the store to the next derived port and the other ranks find it there,
/// passing over a listener that never answers and one that speaks garbage.
#[test]
fn a_taken_derived_port_moves_the_store() {
    use oxccl::bootstrap::env::{detect, LaunchEnv};
    use std::io::Write;
    let job = format!("taken-{}-{}", std::process::id(), free_port());
    let env_of = |r: usize| -> LaunchEnv {
        let vars = [
            ("OMPI_COMM_WORLD_RANK", r.to_string()),
            ("OMPI_COMM_WORLD_SIZE", "3".to_string()),
            ("OMPI_COMM_WORLD_LOCAL_RANK", r.to_string()),
            ("OMPI_COMM_WORLD_LOCAL_SIZE", "3".to_string()),
            ("PMIX_NAMESPACE", job.clone()),
        ];
        detect(&|k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone())).unwrap()
    };
    let env0 = env_of(0);
    assert!(env0.alternates.len() >= 2, "{:?}", env0.alternates);
    // The derived port: a listener that accepts nothing (the kernel completes connections into
    // its backlog; nobody answers). The first alternate: one that answers with garbage.
    let _silent = std::net::TcpListener::bind(env0.addr);
    let garbage = std::net::TcpListener::bind(env0.alternates[0]);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    if let Ok(l) = garbage {
        l.set_nonblocking(true).unwrap();
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match l.accept() {
                    Ok((mut s, _)) => {
                        let _ = s.write_all(&[0xAB; 64]);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
    }
    let hs: Vec<_> = (1..3)
        .map(|r| {
            let env = env_of(r);
            std::thread::spawn(move || Communicator::from_launch_env(&env, quick()))
        })
        .collect();
    let c0 = Communicator::from_launch_env(&env0, quick()).unwrap();
    let mut comms = vec![c0];
    comms.extend(hs.into_iter().map(|h| h.join().unwrap().unwrap()));
    sum_check(&comms);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// The real Open MPI launcher, where it is installed (CI installs it).
#[test]
fn runs_under_real_mpirun() {
    if Command::new("mpirun").arg("--version").output().is_err() {
        assert!(std::env::var("CI").is_err(), "CI must install Open MPI (openmpi-bin)");
        eprintln!("skipped: mpirun is not installed");
        return;
    }
    let out = Command::new("mpirun")
        .args(["--allow-run-as-root", "--oversubscribe", "-np", "2"])
        .arg(env!("CARGO_BIN_EXE_oxccl-bench"))
        .args(["-b", "8", "-e", "1M", "-f", "16", "-n", "2", "-w", "1", "-c", "1"])
        .env("OMPI_MCA_plm_rsh_agent", "")
        .env("OXCCL_TIMEOUT_MS", "30000")
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    assert!(text.contains("# Out of bounds values : 0 OK"), "{text}");
}

/// Strangers sending garbage to the store (random bytes, random lengths, some starting like
/// a real greeting) are refused one by one, and an authenticated client still works
/// between them and after them.
#[test]
fn store_survives_garbage_from_strangers() {
    use oxccl::bootstrap::tcp_store::{TcpStore, TcpStoreServer};
    use oxccl_transport::Store;
    use std::io::{Read, Write};
    let secret = [7u8; 16];
    let server = TcpStoreServer::start("127.0.0.1:0".parse().unwrap(), secret).unwrap();
    let addr = server.addr();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for round in 0..60 {
        let len = (next() % 300) as usize;
        let mut junk: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        if round % 3 == 0 && junk.len() >= 8 {
            // Looks like the start of a real exchange, lies afterwards.
            junk[..4].copy_from_slice(b"OXHS");
        }
        if let Ok(mut s) = std::net::TcpStream::connect(addr) {
            s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
            let _ = s.write_all(&junk);
            let _ = s.shutdown(std::net::Shutdown::Write);
            let mut sink = Vec::new();
            let _ = s.read_to_end(&mut sink);
        }
        if round % 10 == 0 {
            let deadline = Instant::now() + Duration::from_secs(5);
            let store = TcpStore::connect(addr, secret, Some(0), deadline).unwrap();
            store.set(&format!("k{round}"), b"v").unwrap();
            assert_eq!(store.get(&format!("k{round}"), deadline).unwrap(), b"v");
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let store = TcpStore::connect(addr, secret, Some(1), deadline).unwrap();
    assert_eq!(store.get("k50", deadline).unwrap(), b"v");
}
