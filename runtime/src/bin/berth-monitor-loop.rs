//! berth-monitor-loop: the long-lived half of a container's monitor, exec'd
//! by berth-monitor once it forked the container's init (see
//! `berth_runtime::monitor::handoff`). A binary of its own so that the code
//! mapped into each monitor for the container's life is the loop's only.
//! Started by berth-monitor only; its arguments are not a user interface.

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    std::process::exit(berth_runtime::monitor::handoff::main(&args));
}
