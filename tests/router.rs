//! Per-peer transports: a world whose pairs of ranks reach each other through different
//! transports (in-process for ranks of equal parity, TCP for the others), running the whole
//! collective sweep through a `Router`.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{on_all, sweep, test_config};
use oxccl::Communicator;
use oxccl_transport::{LoopbackTransport, MemoryStore, Router, TcpOptions, TcpTransport, Transport};

#[test]
fn mixed_transports_per_peer_run_every_collective() {
    let p = 4;
    let local: Vec<Arc<dyn Transport>> =
        LoopbackTransport::world(p).into_iter().map(|t| Arc::new(t) as Arc<dyn Transport>).collect();
    let store = Arc::new(MemoryStore::new());
    let tcp: Vec<Arc<dyn Transport>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..p)
            .map(|r| {
                let store = store.clone();
                s.spawn(move || {
                    let t = TcpTransport::connect(
                        r,
                        p,
                        &*store,
                        [1; 16],
                        TcpOptions::default(),
                        Instant::now() + Duration::from_secs(20),
                    );
                    Arc::new(t.unwrap()) as Arc<dyn Transport>
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let comms: Vec<Communicator> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..p)
            .map(|r| {
                let (l, t) = (local[r].clone(), tcp[r].clone());
                s.spawn(move || {
                    let route = (0..p).map(|q| if q % 2 == r % 2 { 0 } else { 1 }).collect();
                    let router = Router::new(vec![l, t], route).unwrap();
                    Communicator::from_transport(Arc::new(router), test_config()).unwrap()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(comms[0].transport_name(), "router");
    let fails = on_all(&comms, |c| sweep(c, true));
    assert!(fails.is_empty(), "{} failures:\n{}", fails.len(), fails.join("\n"));
    assert!(comms[0].split(Some(0), 0).is_err(), "no store to split through");
}
