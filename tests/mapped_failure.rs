//! A rank whose part of a mapped schedule fails: in a test binary of its own, as the failure
//! is injected through a process-wide setting that any mapped call on rank 1 would take.

mod common;

use common::{on_all, test_config};
use oxccl::Communicator;

#[test]
fn a_failed_mapped_part_fails_the_call_on_every_rank() {
    // Rank 1's part of a mapped all-reduce fails (injected, as a bug would): its peers'
    // outputs lack its slice, so they must fail too rather than return wrong data, and rank 1
    // must not return (and free its buffers) while they still write into them.
    let cfg = test_config().with_algorithm("mapped").unwrap();
    let comms = Communicator::local_world(3, cfg).unwrap();
    oxccl_algorithms::mapped::fail_next_part_of(1);
    let errors = on_all(&comms, |c| {
        let send = vec![1f32; 1 << 20];
        let mut recv = vec![0f32; 1 << 20];
        match c.all_reduce_into(&send, &mut recv, oxccl::ReduceOp::Sum) {
            Ok(()) => vec![format!("rank {}: Ok", c.rank())],
            Err(e) => vec![format!("rank {}: {e}", c.rank())],
        }
    });
    assert_eq!(errors.len(), 3, "{errors:?}");
    assert!(errors[1].contains("injected failure"), "{errors:?}");
    for r in [0, 2] {
        assert!(errors[r].contains("rank 1 failed its part of the mapped all_reduce"), "{errors:?}");
    }
}
