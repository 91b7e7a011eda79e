//! All-reduce across processes.
//!
//! ```text
//! cargo build --release --example allreduce --bin oxrun
//! target/release/oxrun -n 4 target/release/examples/allreduce
//! ```
//! Under torchrun, mpirun or srun it runs unchanged: `Communicator::from_env` reads their
//! variables.

use oxccl::{Communicator, ReduceOp};

fn main() -> oxccl::Result<()> {
    oxccl::init_logging();
    let comm = Communicator::from_env()?;
    let (rank, size) = (comm.rank(), comm.size());

    // Each rank contributes rank + 1 in every element; the sum is size (size + 1) / 2.
    let mut grads = vec![(rank + 1) as f32; 1 << 20];
    comm.all_reduce(&mut grads, ReduceOp::Sum)?;
    let expected = (size * (size + 1) / 2) as f32;
    assert!(grads.iter().all(|&g| g == expected));

    // Gather one value from every rank.
    let mut ranks = vec![0u32; size];
    comm.all_gather_into(&[rank as u32], &mut ranks)?;
    assert_eq!(ranks, (0..size as u32).collect::<Vec<_>>());

    if rank == 0 {
        println!("all-reduce of {} floats over {size} ranks: every element is {expected}", grads.len());
    }
    Ok(())
}
