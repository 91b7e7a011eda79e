//! Reading rank, world size and rendezvous address from the launcher's environment.
//!
//! | launcher | rank | size | local rank | rendezvous |
//! | --- | --- | --- | --- | --- |
//! | oxrun / by hand | `OXCCL_RANK` | `OXCCL_WORLD_SIZE` | `OXCCL_LOCAL_RANK` | `OXCCL_ADDR` |
//! | torchrun | `RANK` | `WORLD_SIZE` | `LOCAL_RANK` | `MASTER_ADDR`:`MASTER_PORT`+1 |
//! | mpirun (Open MPI) | `OMPI_COMM_WORLD_RANK` | `OMPI_COMM_WORLD_SIZE` | `OMPI_COMM_WORLD_LOCAL_RANK` | `OXCCL_ADDR`/`MASTER_ADDR`, or loopback when all ranks share one host |
//! | srun (Slurm) | `SLURM_PROCID` | `SLURM_NTASKS` | `SLURM_LOCALID` | as mpirun, one host when `SLURM_NNODES=1` |
//!
//! `OXCCL_ADDR` always wins when set. Under torchrun, `MASTER_PORT` is taken by torchrun's own
//! store, so rank 0 hosts oxccl's store on the next port. The store is hosted by rank 0
//! unless `OXCCL_STORE_HOST=launcher` says the launcher (oxrun) hosts it. The secret comes
//! from `OXCCL_SECRET` (32 hex digits); where no launcher provides one it is derived from the
//! job's identity, which keeps jobs apart but is no protection against a local attacker: set
//! `OXCCL_SECRET` on every rank for that.
//!
//! Where oxccl derives the port itself (mpirun or srun on one host, no address given), it
//! cannot know the port is free: rank 0 takes the first free one of a few ports derived from
//! the job ([`LaunchEnv::alternates`]), below Linux's default ephemeral range so that other
//! programs' outgoing connections seldom hold them, and the other ranks look for the store at
//! each in turn, passing over listeners that do not know the job's secret.

use std::net::{SocketAddr, ToSocketAddrs};

use oxccl_transport::auth::Secret;
use sha2::{Digest, Sha256};

use crate::bootstrap::unique_id::parse_secret;
use crate::error::{Error, Result};

/// Who runs the store server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreHost {
    /// Rank 0 starts it at the rendezvous address.
    Rank0,
    /// The launcher already runs it there.
    Launcher,
}

/// What the launcher's environment says about this process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchEnv {
    /// This process's rank.
    pub rank: usize,
    /// The number of ranks.
    pub world_size: usize,
    /// The rank among the ranks of this host, if the launcher says.
    pub local_rank: Option<usize>,
    /// The number of ranks on this host, if the launcher says.
    pub local_world_size: Option<usize>,
    /// The rendezvous store's address.
    pub addr: SocketAddr,
    /// Where oxccl derived `addr` (a single-host job whose launcher names no address): the
    /// addresses rank 0 moves its store to, in order, when `addr`'s port is taken, and where
    /// the other ranks look for it. Empty when the address was given.
    pub alternates: Vec<SocketAddr>,
    /// The world's secret.
    pub secret: Secret,
    /// Who runs the store.
    pub store_host: StoreHost,
    /// Which launcher was recognised (`oxccl`, `torchrun`, `mpirun`, `srun`).
    pub launcher: &'static str,
}

type Lookup<'a> = &'a dyn Fn(&str) -> Option<String>;

fn get(env: Lookup<'_>, name: &str) -> Option<String> {
    env(name).map(|v| v.trim().to_string()).filter(|v| !v.is_empty())
}

fn num(env: Lookup<'_>, name: &str) -> Result<Option<usize>> {
    match get(env, name) {
        None => Ok(None),
        Some(v) => v
            .parse::<usize>()
            .map(Some)
            .map_err(|_| Error::invalid_argument(format!("{name}='{v}' is not a non-negative integer"))),
    }
}

fn required(env: Lookup<'_>, name: &str, launcher: &str) -> Result<usize> {
    num(env, name)?.ok_or_else(|| Error::invalid_argument(format!("{name} is not set (needed under {launcher})")))
}

fn resolve(host: &str, port: u16, var: &str) -> Result<SocketAddr> {
    (host, port)
        .to_socket_addrs()
        .map_err(|e| Error::invalid_argument(format!("{var}: cannot resolve '{host}': {e}")))?
        .find(|a| a.is_ipv4())
        .ok_or_else(|| Error::invalid_argument(format!("{var}: '{host}' has no IPv4 address")))
}

fn parse_addr(v: &str, var: &str) -> Result<SocketAddr> {
    let (host, port) =
        v.rsplit_once(':').ok_or_else(|| Error::invalid_argument(format!("{var}='{v}' is not HOST:PORT")))?;
    let port: u16 = port.parse().map_err(|_| Error::invalid_argument(format!("{var}='{v}': bad port")))?;
    resolve(host.trim_matches(['[', ']']), port, var)
}

fn master_addr(env: Lookup<'_>, port_offset: u16) -> Result<Option<SocketAddr>> {
    match (get(env, "MASTER_ADDR"), get(env, "MASTER_PORT")) {
        (Some(h), Some(p)) => {
            let port: u16 =
                p.parse().map_err(|_| Error::invalid_argument(format!("MASTER_PORT='{p}' is not a port")))?;
            let port =
                port.checked_add(port_offset).ok_or_else(|| Error::invalid_argument("MASTER_PORT is too large"))?;
            Ok(Some(resolve(&h, port, "MASTER_ADDR")?))
        }
        (Some(_), None) => Err(Error::invalid_argument("MASTER_ADDR is set but MASTER_PORT is not")),
        (None, Some(_)) => Err(Error::invalid_argument("MASTER_PORT is set but MASTER_ADDR is not")),
        (None, None) => Ok(None),
    }
}

fn derive(parts: &[&str]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"oxccl-derived-v1");
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
    }
    h.finalize().into()
}

/// How many ports a single-host job without a rendezvous address may try.
pub const DERIVED_PORTS: usize = 8;

/// The `k`th port derived from a job's identity, for single-host jobs whose launcher gives no
/// rendezvous address: in 20000..32768, below Linux's default ephemeral range (32768-60999),
/// where outgoing connections take their local ports.
fn derived_port(job: &str, k: usize) -> u16 {
    let d = derive(&["port", job, &k.to_string()]);
    20000 + (u16::from_le_bytes([d[0], d[1]]) % 12768)
}

/// Reads the launcher environment through `env` (for tests; [`LaunchEnv::from_process`] reads
/// the real one).
pub fn detect(env: Lookup<'_>) -> Result<LaunchEnv> {
    let explicit_addr = get(env, "OXCCL_ADDR").map(|v| parse_addr(&v, "OXCCL_ADDR")).transpose()?;
    let store_host = match get(env, "OXCCL_STORE_HOST").as_deref() {
        None | Some("rank0") => StoreHost::Rank0,
        Some("launcher") => StoreHost::Launcher,
        Some(v) => return Err(Error::invalid_argument(format!("OXCCL_STORE_HOST='{v}' is not rank0 or launcher"))),
    };

    let (launcher, rank, size, local_rank, local_size, (addr, alternates), job) = if get(env, "OXCCL_RANK").is_some() {
        let rank = required(env, "OXCCL_RANK", "oxccl")?;
        let size = required(env, "OXCCL_WORLD_SIZE", "oxccl (OXCCL_RANK is set)")?;
        let addr = explicit_addr.ok_or_else(|| {
            Error::invalid_argument("OXCCL_ADDR is not set (OXCCL_RANK is set; give the rendezvous HOST:PORT)")
        })?;
        // A contradicting torchrun/MPI/Slurm rank means two launchers disagree.
        for other in ["RANK", "OMPI_COMM_WORLD_RANK", "SLURM_PROCID"] {
            if let Some(v) = num(env, other)? {
                if v != rank {
                    return Err(Error::invalid_argument(format!(
                        "contradictory launcher settings: OXCCL_RANK={rank} but {other}={v}"
                    )));
                }
            }
        }
        let local_size = num(env, "OXCCL_LOCAL_WORLD_SIZE")?;
        ("oxccl", rank, size, num(env, "OXCCL_LOCAL_RANK")?, local_size, (addr, Vec::new()), String::new())
    } else if get(env, "RANK").is_some() && get(env, "WORLD_SIZE").is_some() {
        let rank = required(env, "RANK", "torchrun")?;
        let size = required(env, "WORLD_SIZE", "torchrun")?;
        let job = get(env, "TORCHELASTIC_RUN_ID").unwrap_or_default();
        let offset = if get(env, "TORCHELASTIC_RUN_ID").is_some() { 1 } else { 0 };
        let addr = match explicit_addr {
            Some(a) => a,
            None => master_addr(env, offset)?.ok_or_else(|| {
                Error::invalid_argument(
                    "MASTER_ADDR and MASTER_PORT are not set (RANK and WORLD_SIZE are; set OXCCL_ADDR)",
                )
            })?,
        };
        let ls = num(env, "LOCAL_WORLD_SIZE")?;
        ("torchrun", rank, size, num(env, "LOCAL_RANK")?, ls, (addr, Vec::new()), job)
    } else if get(env, "OMPI_COMM_WORLD_RANK").is_some() {
        let rank = required(env, "OMPI_COMM_WORLD_RANK", "mpirun")?;
        let size = required(env, "OMPI_COMM_WORLD_SIZE", "mpirun")?;
        let ls = num(env, "OMPI_COMM_WORLD_LOCAL_SIZE")?;
        let job = ["OMPI_MCA_ess_base_jobid", "PMIX_NAMESPACE", "OMPI_MCA_orte_hnp_uri"]
            .iter()
            .find_map(|v| get(env, v))
            .unwrap_or_default();
        let addr =
            single_host_addr(env, explicit_addr, ls == Some(size), &job, "mpirun", "OMPI_COMM_WORLD_LOCAL_SIZE")?;
        ("mpirun", rank, size, num(env, "OMPI_COMM_WORLD_LOCAL_RANK")?, ls, addr, job)
    } else if get(env, "SLURM_PROCID").is_some() {
        let rank = required(env, "SLURM_PROCID", "srun")?;
        let size = required(env, "SLURM_NTASKS", "srun")?;
        let job = format!(
            "{}.{}",
            get(env, "SLURM_JOB_ID").unwrap_or_default(),
            get(env, "SLURM_STEP_ID").unwrap_or_default()
        );
        let one_node = num(env, "SLURM_NNODES")? == Some(1) || num(env, "SLURM_STEP_NUM_NODES")? == Some(1);
        let addr = single_host_addr(env, explicit_addr, one_node, &job, "srun", "SLURM_NNODES")?;
        let ls = if one_node { Some(size) } else { None };
        ("srun", rank, size, num(env, "SLURM_LOCALID")?, ls, addr, job)
    } else {
        return Err(Error::invalid_argument(
            "no launcher environment found: set OXCCL_RANK, OXCCL_WORLD_SIZE and OXCCL_ADDR, \
             or run under oxrun, torchrun, mpirun or srun",
        ));
    };

    if size == 0 {
        return Err(Error::invalid_argument(format!("the world size is 0 (from {launcher}'s environment)")));
    }
    if rank >= size {
        return Err(Error::invalid_argument(format!(
            "rank {rank} is not below the world size {size} (from {launcher}'s environment)"
        )));
    }
    if let (Some(lr), Some(ls)) = (local_rank, local_size) {
        if lr >= ls {
            return Err(Error::invalid_argument(format!("local rank {lr} is not below the local world size {ls}")));
        }
    }
    let secret = match get(env, "OXCCL_SECRET") {
        Some(s) => parse_secret(&s).ok_or_else(|| Error::invalid_argument("OXCCL_SECRET is not 32 hex digits"))?,
        None => {
            let d = derive(&["secret", launcher, &job, &addr.to_string(), &size.to_string()]);
            let mut s = [0u8; 16];
            s.copy_from_slice(&d[..16]);
            s
        }
    };
    Ok(LaunchEnv {
        rank,
        world_size: size,
        local_rank,
        local_world_size: local_size,
        addr,
        alternates,
        secret,
        store_host,
        launcher,
    })
}

/// The rendezvous address of a job whose launcher may name none, and its alternates (see
/// [`LaunchEnv::alternates`]).
fn single_host_addr(
    env: Lookup<'_>,
    explicit: Option<SocketAddr>,
    one_host: bool,
    job: &str,
    launcher: &str,
    size_var: &str,
) -> Result<(SocketAddr, Vec<SocketAddr>)> {
    if let Some(a) = explicit {
        return Ok((a, Vec::new()));
    }
    if let Some(a) = master_addr(env, 0)? {
        return Ok((a, Vec::new()));
    }
    if one_host {
        let mut addrs: Vec<SocketAddr> = Vec::with_capacity(DERIVED_PORTS);
        for a in (0..DERIVED_PORTS).map(|k| SocketAddr::from(([127, 0, 0, 1], derived_port(job, k)))) {
            if !addrs.contains(&a) {
                addrs.push(a);
            }
        }
        let first = addrs.remove(0);
        return Ok((first, addrs));
    }
    Err(Error::invalid_argument(format!(
        "OXCCL_ADDR is not set: under {launcher} across several hosts ({size_var} says so), \
         set OXCCL_ADDR=HOST:PORT (or MASTER_ADDR and MASTER_PORT) to an address of rank 0's host"
    )))
}

impl LaunchEnv {
    /// Reads the process environment.
    pub fn from_process() -> Result<LaunchEnv> {
        detect(&|k| std::env::var(k).ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn run(vars: &[(&str, &str)]) -> Result<LaunchEnv> {
        let m: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        detect(&move |k| m.get(k).cloned())
    }

    #[test]
    fn oxccl_variables() {
        let e = run(&[
            ("OXCCL_RANK", "2"),
            ("OXCCL_WORLD_SIZE", "4"),
            ("OXCCL_LOCAL_RANK", "0"),
            ("OXCCL_ADDR", "127.0.0.1:1234"),
            ("OXCCL_SECRET", "000102030405060708090a0b0c0d0e0f"),
            ("OXCCL_STORE_HOST", "launcher"),
        ])
        .unwrap();
        assert_eq!((e.rank, e.world_size, e.local_rank, e.launcher), (2, 4, Some(0), "oxccl"));
        assert_eq!(e.addr, "127.0.0.1:1234".parse().unwrap());
        assert_eq!(e.secret[15], 15);
        assert_eq!(e.store_host, StoreHost::Launcher);
    }

    #[test]
    fn missing_and_contradictory_variables_are_named() {
        let e = run(&[("OXCCL_RANK", "0"), ("OXCCL_ADDR", "127.0.0.1:1")]).unwrap_err();
        assert!(e.to_string().contains("OXCCL_WORLD_SIZE"), "{e}");
        let e = run(&[("OXCCL_RANK", "0"), ("OXCCL_WORLD_SIZE", "2")]).unwrap_err();
        assert!(e.to_string().contains("OXCCL_ADDR"), "{e}");
        let e = run(&[("OXCCL_RANK", "3"), ("OXCCL_WORLD_SIZE", "2"), ("OXCCL_ADDR", "127.0.0.1:1")]).unwrap_err();
        assert!(e.to_string().contains("rank 3"), "{e}");
        let e = run(&[("OXCCL_RANK", "1"), ("OXCCL_WORLD_SIZE", "2"), ("OXCCL_ADDR", "127.0.0.1:1"), ("RANK", "0")])
            .unwrap_err();
        assert!(e.to_string().contains("contradictory"), "{e}");
        let e = run(&[("OXCCL_RANK", "x"), ("OXCCL_WORLD_SIZE", "2"), ("OXCCL_ADDR", "127.0.0.1:1")]).unwrap_err();
        assert!(e.to_string().contains("OXCCL_RANK='x'"), "{e}");
        let e = run(&[]).unwrap_err();
        assert!(e.to_string().contains("no launcher environment"), "{e}");
        let e = run(&[("RANK", "0"), ("WORLD_SIZE", "2")]).unwrap_err();
        assert!(e.to_string().contains("MASTER_ADDR"), "{e}");
        let e = run(&[("RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "127.0.0.1")]).unwrap_err();
        assert!(e.to_string().contains("MASTER_PORT"), "{e}");
    }

    #[test]
    fn torchrun_mpirun_and_srun() {
        let e = run(&[
            ("RANK", "1"),
            ("WORLD_SIZE", "2"),
            ("LOCAL_RANK", "1"),
            ("MASTER_ADDR", "127.0.0.1"),
            ("MASTER_PORT", "29500"),
            ("TORCHELASTIC_RUN_ID", "abc"),
        ])
        .unwrap();
        assert_eq!((e.rank, e.world_size, e.local_rank, e.launcher), (1, 2, Some(1), "torchrun"));
        assert_eq!(e.addr.port(), 29501, "torchrun's agent holds MASTER_PORT");
        assert!(e.alternates.is_empty(), "a port the launcher names has no alternates");

        let m = |r: &str| {
            run(&[
                ("OMPI_COMM_WORLD_RANK", r),
                ("OMPI_COMM_WORLD_SIZE", "4"),
                ("OMPI_COMM_WORLD_LOCAL_RANK", r),
                ("OMPI_COMM_WORLD_LOCAL_SIZE", "4"),
                ("PMIX_NAMESPACE", "prterun-x-1@1"),
            ])
            .unwrap()
        };
        let (a, b) = (m("0"), m("3"));
        assert_eq!((b.rank, b.launcher), (3, "mpirun"));
        assert_eq!(a.addr, b.addr, "every rank of one job derives the same address");
        assert_eq!(a.secret, b.secret, "and the same secret");
        assert!(a.addr.ip().is_loopback());
        assert_eq!(a.alternates, b.alternates, "and the same alternates");
        assert_eq!(a.alternates.len(), DERIVED_PORTS - 1);
        for p in std::iter::once(a.addr).chain(a.alternates.iter().copied()).map(|a| a.port()) {
            assert!((20000..32768).contains(&p), "{p} lies below the ephemeral range");
        }

        let e =
            run(&[("OMPI_COMM_WORLD_RANK", "0"), ("OMPI_COMM_WORLD_SIZE", "4"), ("OMPI_COMM_WORLD_LOCAL_SIZE", "2")])
                .unwrap_err();
        assert!(e.to_string().contains("OXCCL_ADDR"), "{e}");

        let s = run(&[
            ("SLURM_PROCID", "1"),
            ("SLURM_NTASKS", "2"),
            ("SLURM_LOCALID", "1"),
            ("SLURM_NNODES", "1"),
            ("SLURM_JOB_ID", "77"),
        ])
        .unwrap();
        assert_eq!((s.rank, s.world_size, s.launcher), (1, 2, "srun"));
        let e = run(&[("SLURM_PROCID", "1")]).unwrap_err();
        assert!(e.to_string().contains("SLURM_NTASKS"), "{e}");
    }
}
