//! Hosts and the ranks on them, as the hierarchical algorithms see the world.

use oxccl_transport::{Error, Result};

use crate::ctx::Ctx;

/// The world grouped by host.
#[derive(Debug, Clone)]
pub(crate) struct Topology {
    /// `groups[h]`: the ranks on host h, ascending; hosts in order of first appearance.
    pub groups: Vec<Vec<usize>>,
    /// This rank's host.
    pub host: usize,
    /// This rank's index among the ranks of its host.
    pub local: usize,
}

impl Topology {
    /// The topology of `ctx` (every rank on one host when `ctx.hosts` is empty).
    pub fn of(ctx: &Ctx<'_>) -> Result<Topology> {
        let hosts: Vec<usize> = if ctx.hosts.is_empty() { vec![0; ctx.size] } else { ctx.hosts.to_vec() };
        if hosts.len() != ctx.size {
            return Err(Error::internal(format!("{} host entries for {} ranks", hosts.len(), ctx.size)));
        }
        let n = hosts.iter().max().map_or(0, |m| m + 1);
        let mut groups = vec![Vec::new(); n];
        for (r, &h) in hosts.iter().enumerate() {
            groups[h].push(r);
        }
        groups.retain(|g| !g.is_empty());
        let host = groups.iter().position(|g| g.contains(&ctx.rank)).expect("every rank is on a host");
        let local = groups[host].iter().position(|&r| r == ctx.rank).expect("on its host");
        Ok(Topology { groups, host, local })
    }

    /// The ranks on this rank's host.
    pub fn local_group(&self) -> &[usize] {
        &self.groups[self.host]
    }
}
