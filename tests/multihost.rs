//! Two hosts on one machine: network namespaces joined by a veth pair, each with its own
//! host name (`unshare --uts`), one `oxrun` of two ranks per "host" (`--nnodes 2`), every
//! collective of `oxccl-bench` checked across them: shared memory within a host, TCP between
//! them, hierarchical all-reduce. Needs root, iproute2 and util-linux (CI has them;
//! elsewhere the test says it was skipped).

use std::process::{Command, Stdio};

struct Hosts {
    a: String,
    b: String,
}

fn ip(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

impl Hosts {
    /// Namespaces `a` (10.77.N.1) and `b` (10.77.N.2), N from the process id and `salt`
    /// (tests of one process run side by side). Also returns the veth end in `a`.
    fn new(salt: u32) -> Option<(Hosts, String, String)> {
        let id = (std::process::id() + salt * 101) % 250;
        let h = Hosts { a: format!("oxa{id}"), b: format!("oxb{id}") };
        let (va, vb) = (format!("oxva{id}"), format!("oxvb{id}"));
        let (ipa, ipb) = (format!("10.77.{id}.1"), format!("10.77.{id}.2"));
        let ok = ip(&["netns", "add", &h.a])
            && ip(&["netns", "add", &h.b])
            && ip(&["link", "add", &va, "type", "veth", "peer", "name", &vb])
            && ip(&["link", "set", &va, "netns", &h.a])
            && ip(&["link", "set", &vb, "netns", &h.b])
            && ip(&["-n", &h.a, "addr", "add", &format!("{ipa}/24"), "dev", &va])
            && ip(&["-n", &h.b, "addr", "add", &format!("{ipb}/24"), "dev", &vb])
            && ip(&["-n", &h.a, "link", "set", &va, "up"])
            && ip(&["-n", &h.b, "link", "set", &vb, "up"])
            && ip(&["-n", &h.a, "link", "set", "lo", "up"])
            && ip(&["-n", &h.b, "link", "set", "lo", "up"]);
        if ok {
            Some((h, ipa, ipb))
        } else {
            drop(h);
            None
        }
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        ip(&["netns", "del", &self.a]);
        ip(&["netns", "del", &self.b]);
    }
}

/// Starts host `k` of two in namespace `ns`, with its own host name: `oxrun` with `ranks`
/// ranks (node 0 serves the store at `master`) running `oxccl-bench` with `bench_args`.
fn start_host(
    ns: &str,
    k: usize,
    ranks: usize,
    master: &str,
    bench_args: &str,
    timeout_ms: u32,
) -> std::process::Child {
    let run = format!(
        "hostname {ns} && exec {} -n {ranks} --nnodes 2 --node-rank {k} --master {master} {} {bench_args}",
        env!("CARGO_BIN_EXE_oxrun"),
        env!("CARGO_BIN_EXE_oxccl-bench"),
    );
    Command::new("ip")
        .args(["netns", "exec", ns, "unshare", "--uts", "sh", "-c", &run])
        .env("OXCCL_SECRET", "0123456789abcdef0123456789abcdef")
        .env("OXCCL_TIMEOUT_MS", timeout_ms.to_string())
        .env_remove("OXCCL_HOST_ID")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn two_hosts_over_veth_run_every_collective() {
    let Some((hosts, ipa, _)) = Hosts::new(0) else {
        assert!(std::env::var("CI").is_err(), "CI must be able to create network namespaces (root, iproute2)");
        eprintln!("skipped: cannot create network namespaces here");
        return;
    };
    let master = format!("{ipa}:29611");
    let node = |ns: &str, k: usize| {
        start_host(ns, k, 2, &master, "-b 8 -e 4M -f 32 -n 3 -w 1 -c 1 --collective all --algo hierarchical", 30000)
    };
    let a = node(&hosts.a, 0);
    let b = node(&hosts.b, 1);
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    let text = |o: &std::process::Output| {
        format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
    };
    assert!(a.status.success() && b.status.success(), "host a:\n{}\nhost b:\n{}", text(&a), text(&b));
    let out = text(&a);
    assert!(out.contains("4 ranks over router"), "shm within each host, tcp between:\n{out}");
    assert!(out.contains("algorithm hierarchical"), "{out}");
    assert_eq!(out.matches("# Out of bounds values : 0 OK").count(), 6, "{out}");
}

/// The link between the hosts goes down in the middle of a stream of all-reduces: every
/// rank gets an error (a timeout naming the peer it waited for), never a hang.
#[test]
fn link_down_mid_collective_is_an_error_not_a_hang() {
    let Some((hosts, ipa, _)) = Hosts::new(1) else {
        assert!(std::env::var("CI").is_err(), "CI must be able to create network namespaces (root, iproute2)");
        eprintln!("skipped: cannot create network namespaces here");
        return;
    };
    let id = (std::process::id() + 101) % 250;
    let master = format!("{ipa}:29612");
    let node =
        |ns: &str, k: usize| start_host(ns, k, 1, &master, "-b 4M -e 4M -n 100000 -w 1 -c 0 --transport tcp", 3000);
    let a = node(&hosts.a, 0);
    let b = node(&hosts.b, 1);
    // Let the stream run, then cut the wire.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let cut = std::time::Instant::now();
    assert!(ip(&["-n", &hosts.a, "link", "set", &format!("oxva{id}"), "down"]), "could not take the link down");
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    let took = cut.elapsed();
    let text = |o: &std::process::Output| {
        format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
    };
    let (ta, tb) = (text(&a), text(&b));
    assert!(!a.status.success() && !b.status.success(), "host a:\n{ta}\nhost b:\n{tb}");
    for t in [&ta, &tb] {
        assert!(t.contains("timed out") || t.contains("peer lost"), "{t}");
        assert!(t.contains("all_reduce #"), "{t}");
    }
    // The 3 s timeout, plus the launchers winding down.
    assert!(took < std::time::Duration::from_secs(10), "took {took:?}");
}

/// Delay and 1% loss on the link (`tc netem`): every collective still gives correct results
/// across the two hosts. Skipped, saying why, where the kernel has no netem qdisc (this
/// project's VMs: "Specified qdisc kind is unknown").
#[test]
fn delay_and_loss_still_give_correct_results() {
    let Some((hosts, ipa, _)) = Hosts::new(2) else {
        assert!(std::env::var("CI").is_err(), "CI must be able to create network namespaces (root, iproute2)");
        eprintln!("skipped: cannot create network namespaces here");
        return;
    };
    let id = (std::process::id() + 2 * 101) % 250;
    let dev = format!("oxva{id}");
    let netem = Command::new("ip")
        .args(["netns", "exec", &hosts.a, "tc", "qdisc", "add", "dev", &dev, "root", "netem"])
        .args(["delay", "2ms", "loss", "1%"])
        .output();
    match netem {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            eprintln!("skipped: tc netem unavailable here: {}", String::from_utf8_lossy(&o.stderr).trim());
            return;
        }
        Err(e) => {
            eprintln!("skipped: tc not runnable: {e}");
            return;
        }
    }
    let master = format!("{ipa}:29613");
    let node =
        |ns: &str, k: usize| start_host(ns, k, 2, &master, "-b 8 -e 1M -f 32 -n 3 -w 1 -c 1 --collective all", 60000);
    let a = node(&hosts.a, 0);
    let b = node(&hosts.b, 1);
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    let out = format!("{}{}", String::from_utf8_lossy(&a.stdout), String::from_utf8_lossy(&a.stderr));
    assert!(a.status.success() && b.status.success(), "{out}");
    assert_eq!(out.matches("# Out of bounds values : 0 OK").count(), 6, "{out}");
}
