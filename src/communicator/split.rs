//! `split`: new communicators from groups of an existing one (MPI_Comm_split,
//! ncclCommSplit).

use std::time::Instant;

use oxccl_algorithms::{CollArgs, Collective, DataType, ReduceOp};

use super::{build_transport, region, region_mut, Communicator};
use crate::error::{Error, Result};

impl Communicator {
    /// Splits this communicator: every rank calls `split` (collectively, like any collective);
    /// ranks that pass the same `color` form a new communicator, ranked by `key` (ties by
    /// their rank here). A rank that passes `None` takes part in the split but joins no new
    /// communicator and gets `Ok(None)` (NCCL's `NCCL_SPLIT_NOCOLOR`).
    ///
    /// The new communicator has its own connections and configuration (this one's), and lives
    /// independently of this one.
    ///
    /// ```
    /// use oxccl::{Communicator, Config, ReduceOp};
    /// let comms = Communicator::local_world(4, Config::default()).unwrap();
    /// std::thread::scope(|s| {
    ///     for c in &comms {
    ///         s.spawn(move || {
    ///             // Even and odd ranks, each group ranked in reverse.
    ///             let sub = c.split(Some((c.rank() % 2) as u32), -(c.rank() as i64)).unwrap().unwrap();
    ///             assert_eq!(sub.size(), 2);
    ///             let mut v = [c.rank() as u32];
    ///             sub.all_reduce(&mut v, ReduceOp::Sum).unwrap();
    ///             assert_eq!(v[0], if c.rank() % 2 == 0 { 2 } else { 4 });
    ///         });
    ///     }
    /// });
    /// ```
    pub fn split(&self, color: Option<u32>, key: i64) -> Result<Option<Communicator>> {
        let mut boot = self.boot.clone().ok_or_else(|| {
            Error::unsupported(
                "this communicator was built over a caller's transport and has no store to split through",
            )
            .in_collective("split", self.next_seq())
            .on_rank(self.rank)
        })?;
        // Everyone's (color, key): an all-gather of two words.
        let mine = [color.map_or(u64::MAX, u64::from), key as u64];
        let mut all = vec![0u64; 2 * self.size];
        let args = CollArgs {
            send: region(&mine),
            recv: region_mut(&mut all),
            in_place: false,
            count: 2,
            dtype: DataType::U64,
            op: ReduceOp::Sum,
            root: 0,
        };
        let seq = self.next_seq();
        self.execute(Collective::Split, 0, self.config.chunk_bytes, 0, |ctx| {
            oxccl_algorithms::all_gather::ring::run(ctx, &args)
        })?;
        let Some(color) = color else { return Ok(None) };
        let mut members: Vec<(i64, usize)> =
            (0..self.size).filter(|&j| all[2 * j] == u64::from(color)).map(|j| (all[2 * j + 1] as i64, j)).collect();
        members.sort();
        let rank = members.iter().position(|&(_, j)| j == self.rank).expect("this rank has its own color");
        let size = members.len();

        boot.prefix = format!("{}/split{seq}c{color}", boot.prefix);
        boot.local_size_hint = None;
        let deadline = Instant::now() + self.config.timeout;
        let net = build_transport(&boot, rank, size, &self.config, deadline)
            .map_err(|e| e.in_collective("split", seq).on_rank(self.rank))?;
        let mut child = Communicator::assemble(rank, size, self.config.clone(), net, Some(boot), self.profile.clone());
        child.discover_hosts(deadline)?;
        Ok(Some(child))
    }
}
