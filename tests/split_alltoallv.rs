//! Communicator split and all-to-all-v, over the in-process transport and TCP.

mod common;

use common::{on_all, tcp_world, test_config};
use oxccl::check;
use oxccl::{Communicator, ErrorKind, ReduceOp};

fn worlds(p: usize) -> Vec<(&'static str, Vec<Communicator>)> {
    vec![("loopback", Communicator::local_world(p, test_config()).unwrap()), ("tcp", tcp_world(p, test_config()))]
}

#[test]
fn split_by_color_ranks_by_key_and_works() {
    for (name, comms) in worlds(5) {
        let fails = on_all(&comms, |c| {
            let r = c.rank();
            let mut fails = vec![];
            // Colors: {0, 2, 4} and {1, 3}; rank 4 opts out. Keys reverse the order.
            let color = if r == 4 { None } else { Some((r % 2) as u32) };
            match c.split(color, -(r as i64)) {
                Err(e) => return vec![format!("{name} rank {r}: split: {e}")],
                Ok(None) if r == 4 => {}
                Ok(None) => fails.push(format!("{name} rank {r}: no communicator")),
                Ok(Some(sub)) => {
                    let group: Vec<usize> = if r % 2 == 0 { vec![2, 0] } else { vec![3, 1] };
                    if r == 4 || sub.size() != group.len() || group[sub.rank()] != r {
                        fails.push(format!("{name} rank {r}: sub rank {} of {}", sub.rank(), sub.size()));
                    }
                    let mut v = vec![r as u64; 1001];
                    if let Err(e) = sub.all_reduce(&mut v, ReduceOp::Sum) {
                        fails.push(format!("{name} rank {r}: {e}"));
                    }
                    let want: u64 = group.iter().map(|&g| g as u64).sum();
                    if v.iter().any(|&x| x != want) {
                        fails.push(format!("{name} rank {r}: sum {} != {want}", v[0]));
                    }
                }
            }
            // The parent keeps working alongside.
            let mut w = vec![1u32; 7];
            match c.all_reduce(&mut w, ReduceOp::Sum) {
                Err(e) => fails.push(format!("{name} rank {r}: parent: {e}")),
                Ok(()) if w.iter().any(|&x| x != 5) => fails.push(format!("{name} rank {r}: parent sum {w:?}")),
                Ok(()) => {}
            }
            fails
        });
        assert!(fails.is_empty(), "{fails:?}");
    }
}

#[test]
fn all_to_allv_moves_every_block_to_its_place() {
    for (name, comms) in worlds(4) {
        let fails = on_all(&comms, |c| {
            let (r, p) = (c.rank(), c.size());
            // Rank r sends (r + j) % 3 * 5 + j elements to rank j (zero included), packed with
            // a gap of 2 between blocks; receives likewise, packed in reverse order.
            let cnt = |from: usize, to: usize| (from + to) % 3 * 5 + to;
            let send_counts: Vec<usize> = (0..p).map(|j| cnt(r, j)).collect();
            let mut send_displs = vec![0; p];
            let mut at = 0;
            for j in 0..p {
                send_displs[j] = at;
                at += send_counts[j] + 2;
            }
            let mut send = vec![0i32; at];
            for j in 0..p {
                check::fill_pattern(&mut send[send_displs[j]..send_displs[j] + send_counts[j]], r, j);
            }
            let recv_counts: Vec<usize> = (0..p).map(|j| cnt(j, r)).collect();
            let mut recv_displs = vec![0; p];
            let mut at = 0;
            for j in (0..p).rev() {
                recv_displs[j] = at;
                at += recv_counts[j];
            }
            let mut recv = vec![-1i32; at];
            if let Err(e) = c.all_to_allv_into(&send, &send_counts, &send_displs, &mut recv, &recv_counts, &recv_displs)
            {
                return vec![format!("{name} rank {r}: {e}")];
            }
            let wrong: usize = (0..p)
                .map(|j| check::wrong_pattern(&recv[recv_displs[j]..recv_displs[j] + recv_counts[j]], j, r))
                .sum();
            if wrong > 0 {
                vec![format!("{name} rank {r}: {wrong} wrong")]
            } else {
                vec![]
            }
        });
        assert!(fails.is_empty(), "{fails:?}");
    }
}

#[test]
fn all_to_allv_count_mismatch_is_invalid_usage_on_both_sides() {
    for (name, comms) in worlds(2) {
        let errs = on_all(&comms, |c| {
            let r = c.rank();
            // Rank 0 sends 3 to rank 1, but rank 1 expects 4 from rank 0.
            let send_counts = if r == 0 { [1, 3] } else { [2, 1] };
            let recv_counts = if r == 0 { [1, 2] } else { [4, 1] };
            let send = vec![0u8; 8];
            let mut recv = vec![0u8; 8];
            match c.all_to_allv_into(&send, &send_counts, &[0, 4], &mut recv, &recv_counts, &[0, 4]) {
                Ok(()) => vec![format!("{name} rank {r}: no error")],
                Err(e) => vec![format!("{:?}|{e}", e.kind())],
            }
        });
        for e in &errs {
            assert!(e.starts_with(&format!("{:?}", ErrorKind::InvalidUsage)), "{name}: {errs:?}");
            assert!(e.contains("counts disagree"), "{name}: {errs:?}");
        }
    }
}
