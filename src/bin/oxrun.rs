//! `oxrun`: start the ranks of an oxccl program on this host (like `mpirun` / `torchrun`).
//!
//! ```text
//! oxrun -n 4 ./my_program args...                       # 4 ranks here
//! oxrun -n 2 --bind-to core ./my_program               # each rank on a core of its own
//! oxrun -n 8 --nnodes 2 --node-rank 0 --master node0:29500 ./prog   # on node0
//! oxrun -n 8 --nnodes 2 --node-rank 1 --master node0:29500 ./prog   # on node1
//! ```
//! Multi-host launches need the same `OXCCL_SECRET` (32 hex digits) on every host.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::Parser;

/// Start N ranks of an oxccl program on this host.
#[derive(Parser, Debug)]
#[command(name = "oxrun", version, about, trailing_var_arg = true)]
struct Args {
    /// Ranks to start on this host.
    #[arg(short = 'n', long = "nproc", alias = "np", default_value_t = 1)]
    n: usize,
    /// Prefix each output line with the rank that printed it.
    #[arg(long)]
    tag_output: bool,
    /// Hosts in the world; run one oxrun per host.
    #[arg(long, default_value_t = 1)]
    nnodes: usize,
    /// This host's index among them.
    #[arg(long, default_value_t = 0)]
    node_rank: usize,
    /// HOST:PORT where node 0's oxrun serves the rendezvous store.
    #[arg(long)]
    master: Option<String>,
    /// Where the ranks run: `none` (the scheduler decides), `core` (each rank on a core of
    /// its own, as mpirun binds), or `auto` (core where every rank can have one, else round
    /// robin: rank i on core i mod cores).
    #[arg(long = "bind-to", default_value = "none")]
    bind_to: oxccl::launch::Binding,
    /// The program and its arguments.
    #[arg(required = true, num_args = 1..)]
    command: Vec<OsString>,
}

fn main() {
    let a = Args::parse();
    let mut cmd = a.command.into_iter();
    let program = PathBuf::from(cmd.next().expect("clap requires a program"));
    let spec = oxccl::launch::LaunchSpec {
        program,
        args: cmd.collect(),
        nprocs: a.n,
        nnodes: a.nnodes,
        node_rank: a.node_rank,
        master: a.master,
        tag_output: a.tag_output,
        bind: a.bind_to,
    };
    match oxccl::launch::launch(&spec) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("oxrun: {e}");
            std::process::exit(2);
        }
    }
}
